"""In-context learning: induction heads, the gradient-descent dual of linear attention, few-shot prompting.

* `AttentionOnly`: a decoder with attention layers and no MLPs (Elhage et al. 2021; Olsson et al. 2022),
  built from :class:`anatomy.model.Attention`, for the induction-head experiment.
* `repeated_sequences`, `copy_losses`, `head_scores`: the induction task (a random sequence shown twice)
  and the scores that find the heads that solve it (prefix matching, previous token).
* `induction_experiment`: train an attention-only decoder on the task and record the phase change.
* `masked_induction_experiment`: the same task, data and budget for an attention-only *encoder* trained
  as a masked LM (BERT's objective), probed by filling one masked slot of the second copy
  (`fill_losses`): does a model trained to fill blanks, not to continue text, learn to use its context?
* `dual_form`: one gradient-descent step on a linear model equals one linear-attention layer over the
  examples (Dai et al. 2023; von Oswald et al. 2023); putting the softmax back breaks the equality.
* `few_shot_accuracy`: k-shot prompting of a causal LM, accuracy against k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anatomy._checks import check_float, check_instance, check_int
from anatomy.model import Attention, Config, ModelOutput, RopeTable, _check_ids, make_norm

__all__ = [
    "AttentionOnly",
    "InductionRun",
    "copy_losses",
    "head_scores",
    "induction_batches",
    "induction_experiment",
    "MaskedInductionRun",
    "fill_losses",
    "masked_induction_batches",
    "masked_induction_experiment",
    "plot_decoder_vs_encoder",
    "plot_head_scores",
    "plot_induction",
    "plot_induction_attention",
    "repeated_sequences",
]


# ---------------------------------------------------------------------------------------------------------
# An attention-only decoder
# ---------------------------------------------------------------------------------------------------------


class AttentionOnly(nn.Module):
    """Token (+ learned position) embeddings, ``n_layers`` pre-norm attention layers with residuals, no MLP.

    Uses ``config``'s vocab_size, d_model, n_layers, n_heads, max_seq_len, mask, pos, rope_theta, norm and
    init_std; the MLP fields are ignored. ``model(ids)`` -> logits (B, N, vocab);
    ``return_attn=True`` -> a ModelOutput whose ``attentions`` hold (B, heads, N, N) per layer.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config must be an anatomy.Config, got {type(config).__name__}")
        self.config = c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        if c.pos == "learned":
            self.embed_positions = nn.Embedding(c.max_seq_len, c.d_model)
        self.norms = nn.ModuleList(make_norm(c) for _ in range(c.n_layers))
        self.layers = nn.ModuleList(Attention(c) for _ in range(c.n_layers))
        self.norm = make_norm(c)
        self.rope = RopeTable(c.head_dim, c.rope_theta) if c.pos == "rope" else None  # as in Transformer
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=c.init_std)
        for layer in self.layers:  # GPT-2: writes into the residual stream scaled by 1/sqrt(2 * layers)
            nn.init.normal_(layer.o_proj.weight, std=c.init_std / math.sqrt(2 * c.n_layers))

    def forward(self, input_ids: torch.Tensor, *, return_attn: bool = False):
        c = self.config
        _check_ids(input_ids, c.vocab_size)
        N = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        if c.pos == "learned":
            if N > c.max_seq_len:
                raise ValueError(f"input of length {N} exceeds max_seq_len={c.max_seq_len}")
            x = x + self.embed_positions(torch.arange(N, device=input_ids.device))
        rope = self.rope(0, N, x.device, x.dtype) if c.pos == "rope" else None
        attns = []
        for norm, layer in zip(self.norms, self.layers):
            out, probs = layer(norm(x), mask=c.mask, rope=rope, return_attn=return_attn)
            x = x + out
            attns.append(probs)
        logits = self.lm_head(self.norm(x))
        return ModelOutput(logits, None, tuple(attns)) if return_attn else logits


# ---------------------------------------------------------------------------------------------------------
# The induction task and the scores that find induction heads
# ---------------------------------------------------------------------------------------------------------


def repeated_sequences(
    n: int, length: int, vocab_size: int, generator: torch.Generator | None = None, *, low: int = 0
) -> torch.Tensor:
    """n random sequences of `length` tokens in [low, vocab_size), each shown twice: (n, 2 * length)."""
    check_int("n", n, lo=1)
    check_int("length", length, lo=2)
    check_int("low", low, lo=0)
    check_int("vocab_size", vocab_size, lo=low + 2)
    first = torch.randint(low, vocab_size, (n, length), generator=generator)
    return torch.cat([first, first], dim=1)


def induction_batches(
    batch_size: int, lengths: tuple[int, int], vocab_size: int, seed: int = 0, *, supervise: str = "second"
):
    """``step -> (x, y)``: next-token batches of sequences shown twice, fixed by (seed, step).

    Each batch draws its length L uniformly from `lengths`. supervise: "second" keeps the loss on the
    second copy only (-100 on the first, which no model can predict and which only adds gradient noise);
    "all" on every position. A fixed L would let a model solve the task by position alone (attend L - 1
    tokens back); with a random L and relative positions (RoPE) only a content lookup works.
    """
    check_int("batch_size", batch_size, lo=1)
    check_int("vocab_size", vocab_size, lo=2)
    if not isinstance(lengths, (tuple, list)) or len(lengths) != 2:
        raise TypeError(f"lengths must be a (lo, hi) pair, got {lengths!r}")
    lo, hi = lengths
    check_int("lengths[0]", lo, lo=2)
    if hi < lo:
        raise ValueError(f"lengths must be (lo, hi) with lo <= hi, got {lengths!r}")
    if supervise not in ("second", "all"):
        raise ValueError(f"supervise must be 'second' or 'all', got {supervise!r}")

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
        L = int(torch.randint(lo, hi + 1, (1,), generator=g))
        seqs = repeated_sequences(batch_size, L, vocab_size, g)
        y = seqs[:, 1:].clone()
        if supervise == "second":
            y[:, :L] = -100  # targets 1..L: the first copy and the restart token
        return seqs[:, :-1], y

    return batch


@torch.no_grad()
def copy_losses(model: nn.Module, seqs: torch.Tensor) -> tuple[float, float]:
    """Mean next-token loss (nats) on the first copy and on the second copy of repeated sequences (n, 2L).

    First copy: tokens 1..L-1 (unpredictable: ln V at best). Second copy: tokens L+1..2L-1, each of which
    a model can copy from the first copy (token L, the restart, is in neither).
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    if (
        seqs.dim() != 2
        or seqs.shape[1] % 2
        or not torch.equal(seqs[:, : seqs.shape[1] // 2], seqs[:, seqs.shape[1] // 2 :])
    ):
        raise ValueError("seqs must be (n, 2L) sequences whose two halves are equal")
    L = seqs.shape[1] // 2
    was_training = model.training
    model.eval()
    try:
        logits = model(seqs[:, :-1])
    finally:
        model.train(was_training)
    losses = F.cross_entropy(logits.transpose(1, 2).float(), seqs[:, 1:], reduction="none")  # (n, 2L-1)
    return float(losses[:, : L - 1].mean()), float(losses[:, L:].mean())


def head_scores(
    attentions: Sequence[torch.Tensor],
    tokens: torch.Tensor,
    kind: str = "prefix_matching",
    start: int | None = None,
) -> torch.Tensor:
    """Score every head of every layer: a (layers, heads) tensor in [0, 1].

    attentions: per layer (B, heads, N, N) attention probabilities over the sequence tokens (B, N).
    "prefix_matching" (Olsson et al. 2022): the attention a query puts on keys j whose previous token
    equals the query's token (j - 1 < query), i.e. on the token that followed an earlier occurrence of
    the current one; that is where an induction head looks. "previous_token": attention on position
    query - 1. Averaged over queries >= `start` (default: the second half, where repeats occur) that
    have at least one such key, and over the batch.
    """
    if kind not in ("prefix_matching", "previous_token"):
        raise ValueError(f"kind must be 'prefix_matching' or 'previous_token', got {kind!r}")
    if not attentions or any(a is None for a in attentions):
        raise ValueError(
            "attentions must hold one (B, heads, N, N) tensor per layer (run with return_attn=True)"
        )
    B, N = tokens.shape
    start = N // 2 if start is None else start
    check_int("start", start, lo=1)
    q = torch.arange(N)
    if kind == "previous_token":
        target = (q[None, :, None] - 1 == q[None, None, :]).expand(B, N, N)
    else:
        prev = torch.cat([torch.full((B, 1), -1), tokens[:, :-1]], dim=1)  # token before key j
        target = (prev[:, None, :] == tokens[:, :, None]) & (q[None, None, :] <= q[None, :, None])
        target &= q[None, None, :] >= 1
    rows = target.any(-1) & (q[None, :] >= start)  # (B, N): queries that have a target key
    if not rows.any():
        raise ValueError("no query position >= start has a key to score")
    scores = []
    for a in attentions:
        mass = (a.float() * target[:, None].float()).sum(-1)  # (B, H, N)
        scores.append((mass * rows[:, None]).sum((0, 2)) / rows.sum())
    return torch.stack(scores)


@dataclass
class InductionRun:
    """What `induction_experiment` recorded at every evaluation."""

    length: int  # L: the random sequence is L tokens, shown twice
    vocab_size: int
    steps: list[int] = field(default_factory=list)
    first_copy: list[float] = field(default_factory=list)  # loss on the first copy (nats)
    second_copy: list[float] = field(default_factory=list)  # loss on the second copy (nats)
    prefix_matching: list[torch.Tensor] = field(default_factory=list)  # (layers, heads) per evaluation
    previous_token: list[torch.Tensor] = field(default_factory=list)  # (layers, heads) per evaluation
    attention: list[torch.Tensor] = field(default_factory=list)  # (layers, heads, 2L-1, 2L-1), one example
    example: torch.Tensor | None = None  # the example sequence (2L,) whose attention is stored
    model: nn.Module | None = None
    targets: list[int] = field(default_factory=list)  # positions with a loss seen in training, per evaluation

    def best_head(self, layer: int | None = None, kind: str = "prefix_matching") -> tuple[int, int]:
        """(layer, head) with the highest final score (optionally within one layer)."""
        final = (self.prefix_matching if kind == "prefix_matching" else self.previous_token)[-1]
        if layer is not None:
            return layer, int(final[layer].argmax())
        flat = int(final.argmax())
        return flat // final.shape[1], flat % final.shape[1]

    def phase_change_step(self, threshold: float | None = None) -> int:
        """First evaluated step with a second-copy loss below `threshold` (default: ln V / 2), else -1."""
        threshold = 0.5 * math.log(self.vocab_size) if threshold is None else threshold
        for s, loss in zip(self.steps, self.second_copy):
            if loss < threshold:
                return s
        return -1

    def plateau_end(self, fraction: float = 0.9) -> int:
        """First evaluated step with a second-copy loss below `fraction` * ln V (the plateau's end), else -1.

        A phase change stays near ln V for a while and then falls fast: ``phase_change_step() -
        plateau_end()`` is shorter than ``plateau_end()``. A loss that decays exponentially from ln V at a
        constant rate takes ln(0.9 / 0.5) / ln(1 / 0.9) = 5.6 times longer to fall from 0.9 to 0.5 ln V
        than to reach 0.9 ln V.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        return self.phase_change_step(fraction * math.log(self.vocab_size))

    def rise_step(self, layer: int, head: int, kind: str = "prefix_matching") -> int:
        """First evaluated step at which a head's score is past half-way from its first value to its last."""
        if kind not in ("prefix_matching", "previous_token"):
            raise ValueError(f"kind must be 'prefix_matching' or 'previous_token', got {kind!r}")
        scores = [
            float(s[layer, head])
            for s in (self.prefix_matching if kind == "prefix_matching" else self.previous_token)
        ]
        half = 0.5 * (scores[0] + scores[-1])
        return next(step for step, s in zip(self.steps, scores) if s >= half)


def _default_config(vocab_size: int, length: int, train_lengths: tuple[int, int], mask: str) -> Config:
    """The induction experiments' model: d_model 64, 2 layers of 2 heads, RoPE, LayerNorm (no MLP: see
    `AttentionOnly`), long enough for a sequence shown twice."""
    return Config(
        vocab_size=vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=2,
        max_seq_len=2 * max(length, train_lengths[1]),
        pos="rope",
        norm="layer",
        mask=mask,
    )


def induction_experiment(
    *,
    length: int = 24,
    train_lengths: tuple[int, int] = (8, 24),
    vocab_size: int = 64,
    config: Config | None = None,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    eval_every: int = 25,
    n_eval: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> InductionRun:
    """Train a 2-layer attention-only decoder on repeated random sequences; record the phase change.

    Default model: d_model 64, 2 heads per layer, RoPE, LayerNorm, no MLP. Training: sequences shown
    twice with a random length in `train_lengths` per batch, loss on the second copy
    (`induction_batches`). Evaluation: n_eval fresh sequences of `length` tokens shown twice (Olsson et
    al.'s test). At every evaluation: the loss on each copy, the prefix-matching and previous-token score
    of every head, and every head's attention map on one fixed example.
    """
    from anatomy.train import train

    check_int("length", length, lo=2)
    config = config or _default_config(vocab_size, length, train_lengths, "causal")
    if config.vocab_size != vocab_size:
        raise ValueError(f"config.vocab_size ({config.vocab_size}) must equal vocab_size ({vocab_size})")
    torch.manual_seed(seed)
    model = AttentionOnly(config)
    g = torch.Generator().manual_seed(seed + 10_000)
    eval_seqs = repeated_sequences(n_eval, length, vocab_size, g)
    run = InductionRun(length, vocab_size, example=eval_seqs[0].clone(), model=model)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        first, second = copy_losses(m, eval_seqs)
        out = m(eval_seqs[:, :-1], return_attn=True)
        toks = eval_seqs[:, :-1]
        run.steps.append(len(run.steps) * eval_every)
        run.first_copy.append(first)
        run.second_copy.append(second)
        run.prefix_matching.append(head_scores(out.attentions, toks, "prefix_matching", start=length))
        run.previous_token.append(head_scores(out.attentions, toks, "previous_token", start=1))
        run.attention.append(torch.stack([a[0] for a in out.attentions]).clone())
        return {"first": first, "second": second}

    hist = train(
        model,
        induction_batches(batch_size, train_lengths, vocab_size, seed),
        steps=steps,
        lr=lr,
        warmup=0.02,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
        seed=seed,
    )
    run.steps = [s for s, _ in hist.evals]
    run.targets = [hist.tokens[s - 1] if s else 0 for s in run.steps]
    return run


# ---------------------------------------------------------------------------------------------------------
# The same task for an encoder: a masked LM trained on the same data, probed by filling a masked slot
# ---------------------------------------------------------------------------------------------------------


def _special(vocab_size: int):
    from anatomy.objectives import SpecialTokens

    return SpecialTokens(n_text=vocab_size, n_sentinels=0)  # [MASK] = vocab_size; model vocab vocab_size + 3


def masked_induction_batches(
    batch_size: int, lengths: tuple[int, int], vocab_size: int, seed: int = 0, *, rate: float = 0.15
):
    """``step -> (x, labels)``: BERT masked-LM batches of sequences shown twice, fixed by (seed, step).

    The sequences are those of :func:`induction_batches` (same seed, same step: the same random L and the
    same tokens, here with their last token, 2L in all); `rate` of the positions of each sequence are
    selected as targets, 80% of them replaced by ``[MASK]`` (id `vocab_size`), 10% by a random token, 10%
    left as they are (:func:`anatomy.objectives.masked_lm_batch`). Labels are -100 elsewhere.
    """
    from anatomy.objectives import masked_lm_batch

    check_float("rate", rate, lo=0, hi=1, lo_open=True, hi_open=True)
    lo, hi = lengths
    check_int("lengths[0]", lo, lo=2)
    if hi < lo:
        raise ValueError(f"lengths must be (lo, hi) with lo <= hi, got {lengths!r}")
    special = _special(vocab_size)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
        L = int(torch.randint(lo, hi + 1, (1,), generator=g))
        seqs = repeated_sequences(batch_size, L, vocab_size, g)
        return masked_lm_batch(seqs, special, rate=rate, generator=g)

    return batch


@torch.no_grad()
def fill_losses(model: nn.Module, seqs: torch.Tensor, mask_id: int) -> tuple[float, float]:
    """An encoder's loss (nats) and accuracy at filling one masked slot of the second copy, in context.

    seqs (n, 2L): sequences shown twice. Each of the positions L+1..2L-1 (the ones a decoder is scored on
    by :func:`copy_losses`) is replaced by ``mask_id`` in its own copy of the sequence, everything else
    left visible; the model's prediction at the slot is scored against the hidden token. Without using
    the first copy the best loss is ln V; by copying from it, close to 0.
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    check_int("mask_id", mask_id, lo=0, hi=None if vocab is None else vocab - 1)
    if seqs.dim() != 2 or seqs.shape[1] % 2:
        raise ValueError("seqs must be (n, 2L) sequences shown twice")
    n, N = seqs.shape
    L = N // 2
    slots = torch.arange(L + 1, N)  # (L - 1,)
    x = seqs.repeat_interleave(len(slots), dim=0)  # (n * (L - 1), 2L)
    where = slots.repeat(n)
    rows = torch.arange(len(x))
    x[rows, where] = mask_id
    was_training = model.training
    model.eval()
    try:
        logits = model(x)[rows, where].float()  # (n * (L - 1), vocab)
    finally:
        model.train(was_training)
    target = seqs[:, L + 1 :].reshape(-1)
    return float(F.cross_entropy(logits, target)), float((logits.argmax(-1) == target).float().mean())


@dataclass
class MaskedInductionRun:
    """What `masked_induction_experiment` recorded at every evaluation."""

    length: int
    vocab_size: int  # text tokens (the model's vocabulary adds [MASK] and two unused special ids)
    mask_id: int
    steps: list[int] = field(default_factory=list)
    slot_loss: list[float] = field(default_factory=list)  # loss at a masked slot of the second copy (nats)
    slot_accuracy: list[float] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)  # positions with a loss seen in training, per evaluation
    final_loss: float = math.nan  # slot loss of the trained model on all n_eval sequences
    final_accuracy: float = math.nan
    final_slots: int = 0  # how many masked slots the final numbers average over: n_eval * (L - 1)
    model: nn.Module | None = None

    def phase_change_step(self, threshold: float | None = None) -> int:
        """First evaluated step where the slot loss is below `threshold` (default: half of ln V), else -1."""
        threshold = 0.5 * math.log(self.vocab_size) if threshold is None else threshold
        for s, loss in zip(self.steps, self.slot_loss):
            if loss < threshold:
                return s
        return -1


def masked_induction_experiment(
    *,
    length: int = 24,
    train_lengths: tuple[int, int] = (8, 24),
    vocab_size: int = 64,
    config: Config | None = None,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    rate: float = 0.15,
    eval_every: int = 50,
    n_eval: int = 64,
    curve_eval: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> MaskedInductionRun:
    """`induction_experiment`'s task for an encoder: a 2-layer attention-only masked LM, same data and budget.

    Default model: `induction_experiment`'s (d_model 64, 2 heads per layer, RoPE, LayerNorm, no MLP) with a
    bidirectional mask and a vocabulary with ``[MASK]``. Training: BERT's masked-LM objective on the
    same sequences (`masked_induction_batches`), for the same steps, batch size, learning rate and
    schedule. Evaluation: the decoder's n_eval fresh sequences of `length` tokens shown twice (same seed),
    each slot of the second copy masked in turn (`fill_losses`): the first `curve_eval` of them every
    `eval_every` steps (each costs L - 1 forward passes, so the curve uses fewer), all of them at the end.
    """
    from anatomy.train import train

    check_int("length", length, lo=2)
    special = _special(vocab_size)
    config = config or _default_config(special.vocab_size, length, train_lengths, "bidirectional")
    if config.vocab_size < special.vocab_size:
        raise ValueError(f"config.vocab_size must be at least vocab_size + 3 = {special.vocab_size}")
    torch.manual_seed(seed)
    model = AttentionOnly(config)
    g = torch.Generator().manual_seed(seed + 10_000)
    eval_seqs = repeated_sequences(n_eval, length, vocab_size, g)  # the decoder's evaluation sequences
    check_int("curve_eval", curve_eval, lo=1)
    run = MaskedInductionRun(length, vocab_size, special.mask_id, model=model)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        loss, acc = fill_losses(m, eval_seqs[:curve_eval], special.mask_id)
        run.slot_loss.append(loss)
        run.slot_accuracy.append(acc)
        return {"slot_loss": loss}

    hist = train(
        model,
        masked_induction_batches(batch_size, train_lengths, vocab_size, seed, rate=rate),
        steps=steps,
        lr=lr,
        warmup=0.02,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
        seed=seed,
    )
    run.steps = [s for s, _ in hist.evals]
    run.targets = [hist.tokens[s - 1] if s else 0 for s in run.steps]
    run.final_loss, run.final_accuracy = fill_losses(model, eval_seqs, special.mask_id)
    run.final_slots = n_eval * (length - 1)
    return run


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def plot_induction(run: InductionRun):
    """The phase change: loss on the second copy (left) and the two heads' scores (right) over training."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot(run.steps, run.second_copy, "o-", ms=3, color="#0072B2", label="second copy")
    ax1.axhline(math.log(run.vocab_size), color="#777777", ls="--", lw=0.8)
    ax1.text(
        run.steps[-1],
        math.log(run.vocab_size),
        "ln V: no use of the first copy",
        ha="right",
        va="bottom",
        fontsize=9,
        color="#555555",
    )
    step = run.phase_change_step()
    if step >= 0:
        ax1.axvline(step, color="#D55E00", lw=0.8, ls=":")
        ax2.axvline(step, color="#D55E00", lw=0.8, ls=":")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("loss on the repeated half (nats per token)")
    ax1.set_title("Loss on the second copy")
    layer, head = run.best_head(layer=run.prefix_matching[-1].shape[0] - 1)
    prev_layer, prev_head = run.best_head(layer=0, kind="previous_token")
    ax2.plot(
        run.steps,
        [float(s[layer, head]) for s in run.prefix_matching],
        "o-",
        ms=3,
        color="#009E73",
        label=f"prefix matching, layer {layer + 1} head {head}",
    )
    ax2.plot(
        run.steps,
        [float(s[prev_layer, prev_head]) for s in run.previous_token],
        "s-",
        ms=3,
        color="#CC79A7",
        label=f"previous token, layer {prev_layer + 1} head {prev_head}",
    )
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("training step")
    ax2.set_ylabel("attention on the target key (score)")
    ax2.set_title("The two heads of the circuit")
    ax2.legend(fontsize=9, loc="upper left")
    fig.tight_layout()
    return fig


def plot_induction_attention(run: InductionRun, index: int):
    """Attention maps of the circuit's two heads on the fixed example at evaluation `index`."""
    import matplotlib.pyplot as plt

    L = run.length
    layer, head = run.best_head(layer=run.prefix_matching[-1].shape[0] - 1)
    prev_layer, prev_head = run.best_head(layer=0, kind="previous_token")
    maps = run.attention[index]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4))
    for ax, (lay, h, title) in zip(
        axes, ((prev_layer, prev_head, "previous-token head"), (layer, head, "induction head"))
    ):
        ax.imshow(maps[lay, h].numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        n = maps.shape[-1]
        q = np.arange(L, n)
        target = q - L + 1 if "induction" in title else np.arange(1, n) - 1
        rows = q if "induction" in title else np.arange(1, n)
        ax.plot(target, rows, ".", ms=2.5, color="#D55E00")
        ax.axhline(L - 0.5, color="#999999", lw=0.6)
        ax.axvline(L - 0.5, color="#999999", lw=0.6)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.set_title(f"layer {lay + 1} head {h}: {title}", fontsize=10)
        ax.grid(False)
    fig.suptitle(f"step {run.steps[index]}  (orange dots: where the head should look)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_head_scores(scores: torch.Tensor, title: str = "prefix-matching score per head"):
    """A (layers, heads) score matrix as a heat map, layers bottom to top."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 6.2))
    im = ax.imshow(scores.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer (1 = first)")
    ax.set_xticks(range(scores.shape[1]))
    ax.set_yticks(range(0, scores.shape[0], 3), [str(i + 1) for i in range(0, scores.shape[0], 3)])
    ax.set_title(title, fontsize=10)
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    fig.tight_layout()
    return fig


def plot_decoder_vs_encoder(decoder: InductionRun, encoder: MaskedInductionRun):
    """Loss against training step: the decoder's next token in the second copy, the encoder's masked slot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 4.2))
    ax.plot(
        decoder.steps,
        decoder.second_copy,
        "o-",
        ms=3,
        color="#0072B2",  # book.COLORS["causal"]
        label="decoder (next-token training)",
    )
    ax.plot(
        encoder.steps,
        encoder.slot_loss,
        "s-",
        ms=3,
        color="#D55E00",  # book.COLORS["bidirectional"]
        label="encoder (masked-LM training)",
    )
    ax.axhline(math.log(decoder.vocab_size), color="#777777", ls="--", lw=0.8)
    ax.text(
        decoder.steps[-1],
        math.log(decoder.vocab_size),
        "ln V: no use of the first copy",
        ha="right",
        va="bottom",
        fontsize=9,
        color="#555555",
    )
    ax.set_xlabel("training step (same data, batch and schedule)")
    ax.set_ylabel("loss on the second copy (nats per token)")
    ax.set_title("The same in-context copying task, two objectives")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
