"""Order without positions: what a transformer with no position encoding can know about order.

* :func:`permutation_gap`: how much permuting the input tokens changes the hidden states beyond permuting
  them. A bidirectional model with no position encoding is permutation-equivariant, so the gap is rounding
  noise; a causal one is not.
* Position probes (:func:`probe_features`, :func:`ridge_r2`, :func:`position_probe`): can a linear read-out
  recover a token's position from its hidden state? Held-out R^2, split by sequence.
* Learning an order-sensitive task (:func:`order_experiment`): causal LM and masked LM, each with and
  without position encoding, on an order-2 Markov source, with the exact Bayes-optimal loss of both
  objectives (:func:`markov_masked_posterior`) so that every curve is an excess over its own optimum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from anatomy._checks import check_float, check_int, is_number
from anatomy.data import MarkovSource
from anatomy.model import Config, Transformer
from anatomy.timing import one_thread

__all__ = [
    "OrderRun",
    "context_shuffle_penalty",
    "first_attention_output",
    "hidden_states",
    "markov_masked_posterior",
    "masked_batch",
    "offset_attention",
    "order_experiment",
    "permutation_gap",
    "plot_order_runs",
    "plot_position_signal",
    "plot_probe",
    "position_probe",
    "probe_features",
    "ridge_r2",
]


FEATURES = ("hidden", "hidden+logvar", "update_logvar", "attn_logvar")
TARGETS = ("position", "log_position")


def _check_model(model) -> Transformer:
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    return model


def _check_ids(ids, name: str = "input_ids") -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        raise ValueError(
            f"{name} must be a (B, N) LongTensor of token ids, got "
            f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}"
        )
    if ids.shape[0] < 1 or ids.shape[1] < 2:
        raise ValueError(f"{name} must have B >= 1 sequences of N >= 2 tokens, got {tuple(ids.shape)}")
    return ids


# ------------------------------------------------------------------------------- permutations


@torch.no_grad()
def hidden_states(model: Transformer, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The model's hidden states (embeddings, then every layer; the last one normed), each (B, N, d)."""
    model = _check_model(model)
    was_training = model.training
    model.eval()
    try:
        return model(_check_ids(input_ids), return_hidden=True).hidden_states
    finally:
        model.train(was_training)


def permutation_gap(
    model: Transformer, input_ids: torch.Tensor, perm: torch.Tensor
) -> dict[str, list[float]]:
    """Is f(P x) = P f(x)? Compare the hidden states of the permuted input with the permuted hidden states.

    input_ids (B, N), perm (N,) a permutation of range(N). Returns, per hidden state (embeddings, then each
    layer): ``max_abs`` = max |f(Px) - P f(x)| and ``relative`` = ||f(Px) - P f(x)||_F / ||f(x)||_F, plus
    ``layer``. Zero up to rounding means permutation-equivariant.
    """
    input_ids = _check_ids(input_ids)
    N = input_ids.shape[1]
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.long or perm.shape != (N,):
        raise ValueError(f"perm must be a LongTensor of shape ({N},), got {getattr(perm, 'shape', perm)}")
    if not torch.equal(perm.sort().values, torch.arange(N)):
        raise ValueError("perm must be a permutation of range(N)")
    base = hidden_states(model, input_ids)
    permuted = hidden_states(model, input_ids[:, perm])
    out: dict[str, list[float]] = {"layer": [], "max_abs": [], "relative": []}
    for i, (h, hp) in enumerate(zip(base, permuted)):
        diff = (hp - h[:, perm]).double()
        out["layer"].append(i)
        out["max_abs"].append(float(diff.abs().max()))
        out["relative"].append(float(diff.norm() / h.double().norm()))
    return out


# ----------------------------------------------------------------------------------- probes


@torch.no_grad()
def first_attention_output(model: Transformer, input_ids: torch.Tensor) -> torch.Tensor:
    """What the first attention layer adds to the residual stream, (B, N, d): o_proj(attn(norm(embed(x)))).

    For a causal model with no position encoding this is an average over the tokens so far, so its spread
    across the d features shrinks roughly like 1/position (Chi et al. 2023): a position signal.
    """
    model = _check_model(model)
    input_ids = _check_ids(input_ids)
    if model.config.pos == "rope":
        raise ValueError("first_attention_output is for models without RoPE (pos='none' or 'learned')")
    was_training = model.training
    model.eval()
    try:
        layer = model.layers[0]
        x = model.embed(input_ids)
        h = layer.input_layernorm(x) if layer.pre else x
        out, _ = layer.self_attn(h, mask=model.config.mask)
    finally:
        model.train(was_training)
    return out


def probe_features(
    model: Transformer, input_ids: torch.Tensor, kind: str = "hidden", layer: int = -1
) -> torch.Tensor:
    """Per-token features for a position probe, (B, N, F) float64.

    kind "hidden": the hidden state after `layer` (index into :func:`hidden_states`, -1 = the last);
    "hidden+logvar": the same plus one more feature, the log of its variance across features;
    "update_logvar": one feature, the log of the variance across features of what block `layer` wrote
    into the residual stream, h_layer - h_(layer - 1) (computed from the hidden states alone);
    "attn_logvar": one feature, log of the variance across features of :func:`first_attention_output`.
    """
    if kind not in FEATURES:
        raise ValueError(f"kind must be one of {FEATURES}, got {kind!r}")
    check_int("layer", layer)
    if kind in ("hidden", "hidden+logvar"):
        hs = hidden_states(model, input_ids)
        if not -len(hs) <= layer < len(hs):
            raise ValueError(f"layer must index one of the {len(hs)} hidden states, got {layer}")
        h = hs[layer].double()
        return h if kind == "hidden" else torch.cat([h, torch.log(h.var(-1, keepdim=True))], -1)
    if kind == "update_logvar":
        hs = hidden_states(model, input_ids)
        index = layer % len(hs)
        if index == 0:
            raise ValueError("update_logvar needs a layer >= 1 (the update of layer l is h_l - h_(l-1))")
        update = (hs[index] - hs[index - 1]).double()
        return torch.log(update.var(-1, keepdim=True))
    a = first_attention_output(model, input_ids).double()
    return torch.log(a.var(-1, keepdim=True))


def ridge_r2(features: torch.Tensor, targets: torch.Tensor, n_train: int, ridge: float = 1e-3) -> dict:
    """Fit a ridge regression on the first `n_train` sequences, report R^2 on the others.

    features (S, N, F), targets (N,) or (S, N). Features are standardised with the training statistics;
    `ridge` is the L2 penalty relative to the number of training tokens. Held-out
    R^2 = 1 - SSE / SST, SST around the held-out mean (so a constant prediction scores <= 0).
    Returns {"r2", "pred" (S - n_train, N), "true" (S - n_train, N)}.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        raise ValueError(f"features must be a (S, N, F) tensor, got {getattr(features, 'shape', features)}")
    S, N, Fdim = features.shape
    n_train = check_int("n_train", n_train, lo=1)
    if n_train >= S:
        raise ValueError(f"n_train must leave held-out sequences: n_train={n_train}, S={S}")
    if not is_number(ridge) or not 0 <= ridge < math.inf:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not isinstance(targets, (torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"targets must be a tensor (N,) or (S, N), got {type(targets).__name__}")
    targets = torch.as_tensor(targets, dtype=torch.float64)
    if targets.shape == (N,):
        targets = targets.expand(S, N)
    if targets.shape != (S, N):
        raise ValueError(f"targets must have shape ({N},) or ({S}, {N}), got {tuple(targets.shape)}")
    X = features.double()
    Xtr, ytr = X[:n_train].reshape(-1, Fdim), targets[:n_train].reshape(-1)
    mu, sd = Xtr.mean(0), Xtr.std(0).clamp_min(1e-12)
    Z = (Xtr - mu) / sd
    ymu = ytr.mean()
    A = Z.T @ Z + ridge * Z.shape[0] * torch.eye(Fdim, dtype=torch.float64)
    w = torch.linalg.solve(A, Z.T @ (ytr - ymu))
    Xte, yte = (X[n_train:] - mu) / sd, targets[n_train:]
    pred = Xte @ w + ymu
    sst = ((yte - yte.mean()) ** 2).sum()
    r2 = float(1.0 - ((pred - yte) ** 2).sum() / sst)
    return {"r2": r2, "pred": pred, "true": yte}


@one_thread()
def position_probe(
    model: Transformer,
    input_ids: torch.Tensor,
    kind: str = "hidden",
    layer: int = -1,
    target: str = "position",
    ridge: float = 1e-3,
    n_train: int | None = None,
) -> dict:
    """Held-out R^2 of a linear probe that reads a token's position from `kind` features of `model`.

    input_ids (S, N): S sequences; the first half (or `n_train`) train the probe, the rest test it.
    target "position" (1..N) or "log_position" (log 1..log N). See :func:`ridge_r2` for the result.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    input_ids = _check_ids(input_ids)
    S, N = input_ids.shape
    feats = probe_features(model, input_ids, kind, layer)
    pos = torch.arange(1, N + 1, dtype=torch.float64)
    y = pos if target == "position" else torch.log(pos)
    return ridge_r2(feats, y, n_train if n_train is not None else S // 2, ridge)


# --------------------------------------------------------------- masked LM on a Markov source


def masked_batch(
    seqs: torch.Tensor, mask_id: int, rate: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-LM inputs and labels: exactly round(rate * N) positions per sequence become ``mask_id``.

    Every selected position is replaced by the mask token (no BERT 80/10/10: the exact posterior below
    assumes the masked tokens are hidden). Returns x (B, N) and labels (B, N), -100 where not selected.
    """
    seqs = _check_ids(seqs, "seqs")
    check_int("mask_id", mask_id, lo=0)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    B, N = seqs.shape
    k = max(1, round(rate * N))
    order = torch.rand(B, N, generator=generator).argsort(dim=1)
    selected = torch.zeros(B, N, dtype=torch.bool)
    selected.scatter_(1, order[:, :k], True)
    x = seqs.masked_fill(selected, mask_id)
    labels = torch.where(selected, seqs, torch.full_like(seqs, -100))
    return x, labels


def markov_masked_posterior(source: MarkovSource, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Exact posterior p(x_t | all visible tokens) of every position of an order-K Markov sequence.

    x (B, N) ids (ignored where not visible), visible (B, N) bool. Forward-backward over the chain of the
    last K symbols (V^K states), float64 with per-step normalisation. Returns (B, N, V) probabilities;
    at a visible position it is the point mass on x_t. This is the loss floor of a masked LM: no model
    can beat -log of it on average.
    """
    if not isinstance(source, MarkovSource):
        raise TypeError(f"source must be an anatomy.data.MarkovSource, got {type(source).__name__}")
    x = _check_ids(x, "x")
    if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool or visible.shape != x.shape:
        raise ValueError(f"visible must be a bool tensor of shape {tuple(x.shape)}")
    V, K = source.vocab_size, source.order
    if ((x[visible] < 0) | (x[visible] >= V)).any():
        raise ValueError(f"x must hold ids in [0, {V}) at its visible positions")
    B, N = x.shape
    if N < K:
        raise ValueError(f"sequences must have at least order={K} tokens, got {N}")
    T = torch.from_numpy(source.P.reshape(V**K, V))  # (S, V), state = last K symbols, most recent last
    pi = torch.from_numpy(source.pi.reshape(-1))  # (S,)
    S = V**K
    state_digit = torch.stack([(torch.arange(S) // V ** (K - 1 - j)) % V for j in range(K)])  # (K, S)
    xv = x.clamp(0, V - 1)

    def emit(t: int) -> torch.Tensor:  # (B, V): 1 where symbol v is consistent with position t
        e = torch.ones(B, V, dtype=torch.float64)
        seen = visible[:, t]
        e[seen] = F.one_hot(xv[seen, t], V).double()
        return e

    # alpha_t over the state (x_{t-K+1}, ..., x_t), for t = K-1 .. N-1
    init = pi.expand(B, S).clone()
    for j in range(K):
        init = init * emit(j)[:, state_digit[j]]
    alphas = [init / init.sum(-1, keepdim=True)]
    for t in range(K, N):
        nxt = (alphas[-1][:, :, None] * T[None]).reshape(B, V, S // V, V).sum(1).reshape(B, S)
        nxt = nxt * emit(t)[:, torch.arange(S) % V]
        alphas.append(nxt / nxt.sum(-1, keepdim=True))
    betas = [torch.ones(B, S, dtype=torch.float64)]
    for t in range(N - 1, K - 1, -1):  # beta_{t-1}(s) = sum_v T[s, v] e_t(v) beta_t(s' = (s[1:], v))
        b = betas[0].reshape(B, S // V, V) * emit(t)[:, None, :]  # indexed by (suffix r, v)
        prev = (T.reshape(V, S // V, V)[None] * b[:, None]).sum(-1).reshape(B, S)
        betas.insert(0, prev / prev.sum(-1, keepdim=True))
    post = torch.empty(B, N, V, dtype=torch.float64)
    for i, t in enumerate(range(K - 1, N)):
        gamma = alphas[i] * betas[i]
        gamma = gamma / gamma.sum(-1, keepdim=True)
        post[:, t] = gamma.reshape(B, S // V, V).sum(1)
        if t == K - 1:  # the first K - 1 positions are digits of the first state
            for j in range(K - 1):
                post[:, j] = torch.zeros(B, V, dtype=torch.float64).index_add_(1, state_digit[j], gamma)
    return post


# ------------------------------------------------------------------- the order experiment


@dataclass
class OrderRun:
    """One training run of :func:`order_experiment`: the model, and its excess loss over training."""

    objective: str  # "causal" (next token) or "masked" (masked LM)
    pos: str  # "none", "learned" or "rope"
    model: Transformer
    steps: list[int] = field(default_factory=list)
    excess: list[float] = field(default_factory=list)  # model loss - Bayes loss on the held-out batch (nats)

    @property
    def label(self) -> str:
        mask = "causal" if self.objective == "causal" else "bidirectional"
        kind = {"none": "no position encoding", "learned": "learned positions", "rope": "RoPE"}[self.pos]
        return f"{mask}, {kind}"


def _eval_batch(source: MarkovSource, objective: str, n: int, seq_len: int, mask_rate: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    seqs = source.sample(n, seq_len + (objective == "causal"), generator=g)
    K = source.order
    if objective == "causal":
        x, y = seqs[:, :-1], seqs[:, 1:].clone()
        y[:, : K - 1] = -100  # targets before position K have a different (longer-context) optimum
        bayes = float(source.bayes_next_token_loss(seqs).mean())
        return x, y, bayes
    x, y = masked_batch(seqs, source.vocab_size, mask_rate, g)
    post = markov_masked_posterior(source, seqs, y == -100)
    sel = y != -100
    bayes = float(-torch.log(post[sel, seqs[sel]]).mean())
    return x, y, bayes


def _loss(model: Transformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


@one_thread()
def order_experiment(
    source: MarkovSource,
    runs: Sequence[tuple[str, str]] = (
        ("causal", "none"),
        ("causal", "learned"),
        ("masked", "none"),
        ("masked", "learned"),
    ),
    steps: int = 400,
    batch_size: int = 32,
    seq_len: int = 32,
    mask_rate: float = 0.3,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    d_ff: int | None = None,
    lr: float = 3e-3,
    eval_every: int = 25,
    seed: int = 0,
    progress: bool = False,
) -> list[OrderRun]:
    """Train small transformers on `source` and record their excess loss over the exact optimum.

    runs: (objective, pos) pairs; objective "causal" trains a causal next-token model, "masked" a
    bidirectional masked LM (`mask_rate` of the positions hidden); pos "none", "learned" or "rope"; d_ff the
    MLP width (None: 4 * d_model). All runs of one
    call share the seed of their initial weights and of their data. Excess = held-out loss minus the
    Bayes-optimal loss on the same 256 sequences (entropy rate for next-token prediction,
    :func:`markov_masked_posterior` for the masked LM).
    """
    from anatomy.train import train

    if not isinstance(source, MarkovSource):
        raise TypeError(f"source must be an anatomy.data.MarkovSource, got {type(source).__name__}")
    if not runs:
        raise ValueError("runs must name at least one (objective, pos) pair")
    check_float("mask_rate", mask_rate, lo=0, hi=1, lo_open=True, hi_open=True)
    for objective, pos in runs:
        if objective not in ("causal", "masked") or pos not in ("none", "learned", "rope"):
            raise ValueError(
                f"runs: each must be (objective in causal/masked, pos in none/learned/rope), "
                f"got {(objective, pos)!r}"
            )
    steps, eval_every = check_int("steps", steps, lo=1), check_int("eval_every", eval_every, lo=1)
    V = source.vocab_size
    out = []
    for objective, pos in runs:
        mask = "causal" if objective == "causal" else "bidirectional"
        config = Config(
            vocab_size=V + 1,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_ff=d_ff,
            mask=mask,
            pos=pos,
            max_seq_len=seq_len + 1,
            norm="layer",
            mlp="gelu",
            attn_backend="sdpa",
        )
        torch.manual_seed(seed)
        model = Transformer(config)
        x_ev, y_ev, bayes = _eval_batch(source, objective, 256, seq_len, mask_rate, seed + 7919)
        run = OrderRun(objective, pos, model)

        def batches(step: int, objective=objective):
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            seqs = source.sample(batch_size, seq_len + 1, generator=g)
            if objective == "causal":
                return seqs[:, :-1], seqs[:, 1:]
            return masked_batch(seqs[:, :-1], V, mask_rate, g)

        def eval_fn(m, x_ev=x_ev, y_ev=y_ev, bayes=bayes):
            return {"excess": float(_loss(m, x_ev, y_ev)) - bayes}

        history = train(
            model,
            batches,
            steps=steps,
            lr=lr,
            eval_fn=eval_fn,
            eval_every=eval_every,
            progress=progress,
            seed=seed,
        )
        for step, result in history.evals:
            run.steps.append(step)
            run.excess.append(result["excess"])
        model.eval()
        out.append(run)
    return out


@one_thread()
@torch.no_grad()
def context_shuffle_penalty(
    run: OrderRun,
    source: MarkovSource,
    n: int = 256,
    seq_len: int = 16,
    mask_rate: float = 0.3,
    seed: int = 0,
) -> dict[str, float]:
    """How much a trained model loses when the order of its context is shuffled but its content is kept.

    Causal (next-token) runs: for every target position j >= order, the tokens before position j are
    permuted at random (x_j stays in place) and the loss on x_{j+1} is compared with the unshuffled loss.
    Masked-LM runs: the visible tokens are permuted among the visible positions (masked positions stay),
    and the loss on the masked tokens is compared. A model that ignores order loses nothing; the Bayes
    predictor of an order-2 source loses a lot. Returns {"penalty": mean loss increase (nats), "se": its
    standard error (from the per-sequence mean increases, which are independent), "max_logit_change":
    max |change| of the logits read out}.
    """
    if not isinstance(run, OrderRun):
        raise TypeError(f"run must be an OrderRun, got {type(run).__name__}")
    g = torch.Generator().manual_seed(seed)
    model = run.model.eval()
    K = source.order
    if run.objective == "causal":
        seqs = source.sample(n, seq_len + 1, generator=g)
        x, y = seqs[:, :-1], seqs[:, 1:]
        base = model(x).log_softmax(-1)
        losses, changes = [], []
        for j in range(K, seq_len):
            perm = torch.rand(n, j, generator=g).argsort(-1)
            xs = x.clone()
            xs[:, :j] = torch.gather(x[:, :j], 1, perm)
            out = model(xs).log_softmax(-1)[:, j]
            target = y[:, j : j + 1]
            losses.append((out.gather(1, target) - base[:, j].gather(1, target)).neg()[:, 0])  # (n,)
            changes.append((out - base[:, j]).abs().max())
        per_seq = torch.stack(losses, 1).double().mean(1)  # (n,): one sequence's mean increase
        return {
            "penalty": float(per_seq.mean()),
            "se": float(per_seq.std() / n**0.5),
            "max_logit_change": float(torch.stack(changes).max()),
        }
    seqs = source.sample(n, seq_len, generator=g)
    x, y = masked_batch(seqs, source.vocab_size, mask_rate, g)
    visible = y == -100
    xs = x.clone()
    for b in range(n):  # permute the visible tokens among the visible positions of each sequence
        where = visible[b].nonzero().squeeze(1)
        xs[b, where] = x[b, where[torch.randperm(len(where), generator=g)]]
    base, out = model(x).log_softmax(-1), model(xs).log_softmax(-1)
    sel = ~visible
    target = seqs[sel][:, None]
    increase = torch.zeros(seqs.shape, dtype=torch.float64)
    increase[sel] = (out[sel].gather(1, target) - base[sel].gather(1, target)).neg()[:, 0].double()
    per_seq = increase.sum(1) / sel.sum(1)  # (n,): one sequence's mean increase over its masked tokens
    return {
        "penalty": float(per_seq.mean()),
        "se": float(per_seq.std() / n**0.5),
        "max_logit_change": float((out[sel] - base[sel]).abs().max()),
    }


@one_thread()
@torch.no_grad()
def offset_attention(model: Transformer, input_ids: torch.Tensor, offsets: Sequence[int] = (0, 1, 2)) -> dict:
    """Mean attention weight of every head on the key `offset` positions before its query.

    input_ids (B, N). Averages over the batch and over the queries q >= max(offsets), so that every offset
    has a key. Returns {"mass": (layers, heads, len(offsets)) array, "uniform": (len(offsets),) array}, where
    "uniform" is what attention spread evenly over the visible keys (causal: q + 1 of them; bidirectional:
    N) would put there, averaged over the same queries.
    """
    model = _check_model(model)
    input_ids = _check_ids(input_ids)
    offsets = [check_int("offsets", o, lo=0) for o in offsets]
    N = input_ids.shape[1]
    if not offsets or max(offsets) >= N:
        raise ValueError(f"offsets must be non-empty and below the sequence length {N}, got {offsets}")
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids, return_attn=True)
    finally:
        model.train(was_training)
    q = torch.arange(max(offsets), N)
    mass = torch.stack(
        [torch.stack([a[:, :, q, q - o].float().mean((0, 2)) for o in offsets], -1) for a in out.attentions]
    )
    visible = (q + 1).double() if model.config.mask == "causal" else torch.full((len(q),), float(N))
    uniform = np.full(len(offsets), float((1.0 / visible).mean()))
    return {"mass": mass.numpy(), "uniform": uniform}


# ------------------------------------------------------------------------------------ plots


def plot_order_runs(runs: Sequence[OrderRun], floors: dict[str, float] | None = None):
    """Excess loss over training, next-token (left) and masked LM (right), with and without positions.

    floors: optional {"causal": nats, "masked": nats} drawn as dotted lines (the best an order-blind
    predictor of that kind can do).
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, objective, title in (
        (axes[0], "causal", "next-token prediction (causal)"),
        (axes[1], "masked", "masked LM (bidirectional)"),
    ):
        color = COLORS["causal" if objective == "causal" else "bidirectional"]
        for run in runs:
            if run.objective != objective:
                continue
            ax.plot(
                run.steps,
                run.excess,
                "-" if run.pos == "none" else "--",
                color=color,
                alpha=1.0 if run.pos == "none" else 0.6,
                label=run.label,
            )
        if floors and objective in floors:
            ax.axhline(floors[objective], color="gray", ls=":", lw=1.2)
            last = max((r.steps[-1] for r in runs if r.objective == objective and r.steps), default=1)
            ax.text(
                last,
                floors[objective] * 1.02,
                floors.get(f"{objective}_label", "order-blind floor"),
                color="gray",
                fontsize=8,
                va="bottom",
                ha="right",
            )
        ax.set(xlabel="training step", ylabel="excess loss over the Bayes optimum (nats)", title=title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_probe(results: dict[str, dict], title: str = ""):
    """Predicted against true position for several probes (one panel each), with their held-out R^2."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.3), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        true, pred = res["true"].numpy(), res["pred"].numpy()
        ax.scatter(true.ravel(), pred.ravel(), s=3, alpha=0.25, color=res.get("color", "#0072B2"))
        lo, hi = float(true.min()), float(true.max())
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls=":")
        r2 = f"{res['r2']:.2f}".replace("-0.00", "0.00")
        ax.set(
            title=f"{name}\nheld-out $R^2$ = {r2}",
            xlabel=res.get("xlabel", "true"),
            ylabel="probe's prediction",
        )
        ax.title.set_fontsize(9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_position_signal(variance: dict[str, np.ndarray], probes: dict[str, dict]):
    """Left: variance of the first attention output against position (log-log) per mask, with a 1/t line.
    Right: held-out predictions of log position by the one-feature probe, per mask.

    variance: mask -> (N,) mean variance at each position; probes: mask -> :func:`position_probe` result.
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for mask, var in variance.items():
        t = np.arange(1, len(var) + 1)
        axes[0].loglog(t, var, "o-", ms=3, color=COLORS[mask], label=mask)
    ref = variance.get("causal", next(iter(variance.values())))
    t = np.arange(1, len(ref) + 1)
    axes[0].loglog(t, ref[0] / t, ":", color="gray", label=r"$\propto 1/t$")
    axes[0].set(
        xlabel="position t",
        ylabel="variance of the first attention output",
        title="random model, no position encoding",
    )
    axes[0].legend()
    top = 0.0
    for mask, res in probes.items():
        true, pred = res["true"].numpy().ravel(), res["pred"].numpy().ravel()
        top = max(top, float(true.max()))
        r2 = f"{res['r2']:.2f}".replace("-0.00", "0.00")
        axes[1].scatter(true, pred, s=2, alpha=0.15, color=COLORS[mask], label=f"{mask}: $R^2$ = {r2}")
    axes[1].plot([0, top], [0, top], ":", color="gray")
    axes[1].set(
        xlabel="true log position", ylabel="probe's prediction", title="one-feature probe: log variance"
    )
    axes[1].legend(markerscale=5)
    fig.tight_layout()
    return fig
