"""Capacity and compression: the experiments of the capacity and compression chapter.

Two tools:

* **Population-loss students** (:class:`MLPStudents`, :func:`fit_population`): small next-token models
  trained on the *exact* expected loss of a Markov source, sum_c pi(c) sum_x P(x|c) (-log q(x|c)), over
  every context at once. There is no sample, hence no sampling noise and nothing to memorize: the loss
  minus the entropy rate is exactly the KL to the source, and what limits it is capacity alone. Several
  students of different widths train in one batched computation (Adam is elementwise, so this is the
  same as training them one by one).
* **A scaling family** (:func:`decoder_config`, :func:`scaling_run`): decoders of increasing size trained
  with the same token budget on the same text, their held-out loss recorded at checkpoints.

The power laws fitted to the family's losses and the Chinchilla arithmetic are in
:mod:`anatomy.experiments.scaling_laws`; the chapter's figures in :mod:`anatomy.experiments.capacity_plots`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from anatomy._checks import check_float, check_int, check_tensor, is_number
from anatomy.experiments.parallel import run_all
from anatomy.train import eager_optimizer

__all__ = [
    "MLPStudents",
    "decoder_config",
    "fit_population",
    "scaling_run",
    "student_params",
    "table_params",
    "teacher_source",
    "width_scaled_lr",
]


# ---------------------------------------------------------------------------------------------
# Population-loss students
# ---------------------------------------------------------------------------------------------


def table_params(vocab_size: int, order: int) -> int:
    """Free parameters of an arbitrary order-K transition table: V^K contexts x (V - 1) probabilities."""
    V, K = check_int("vocab_size", vocab_size, lo=2), check_int("order", order, lo=1)
    return V**K * (V - 1)


def student_params(vocab_size: int, order: int, width: int, embed_dim: int = 4) -> int:
    """Parameters of one student: embedding V x e, hidden (K e + 1) x width, output (width + 1) x V."""
    V, K = check_int("vocab_size", vocab_size, lo=2), check_int("order", order, lo=1)
    w, e = check_int("width", width, lo=1), check_int("embed_dim", embed_dim, lo=1)
    return V * e + (K * e + 1) * w + (w + 1) * V


def all_contexts(vocab_size: int, order: int) -> torch.Tensor:
    """Every context of `order` symbols, (V^K, K), in the row order of MarkovSource's tables."""
    check_int("vocab_size", vocab_size, lo=1)
    check_int("order", order, lo=0)
    V, K = vocab_size, order
    index = torch.arange(V**K)
    powers = V ** torch.arange(K - 1, -1, -1)
    return (index[:, None] // powers) % V


class MLPStudents(nn.Module):
    """`len(widths)` independent next-token models q(x | last K symbols), trained side by side.

    Student m embeds each of the K context symbols (its own V x e table), concatenates them, applies one
    tanh layer of width ``widths[m]`` and a linear read-out to V logits:
    ``student_params(V, K, widths[m], e)`` parameters. Students are stacked in groups of similar width
    (widths up to 8, then by power of two) and each group runs as one batched matrix product; within a
    group, hidden units beyond a student's width are multiplied by zero, so they get no gradient, never
    change and do not count. Parameters are float32 (float64 tanh is several times slower on a CPU);
    measure KLs in float64 from the logits.
    """

    def __init__(self, vocab_size: int, order: int, widths: Sequence[int], embed_dim: int = 4, seed: int = 0):
        super().__init__()
        V, K = check_int("vocab_size", vocab_size, lo=2), check_int("order", order, lo=1)
        e = check_int("embed_dim", embed_dim, lo=1)
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
            raise TypeError(f"widths must be a non-empty sequence of ints, got {widths!r}")
        widths = [check_int("widths[i]", w, lo=1) for w in widths]
        self.vocab_size, self.order, self.embed_dim, self.widths = V, K, e, widths
        g = torch.Generator().manual_seed(check_int("seed", seed, lo=0))

        def uniform(shape, bound):
            return (torch.rand(shape, generator=g) * 2 - 1) * bound

        # nn.Linear's default initialisation: uniform in +-1/sqrt(fan_in); embeddings N(0, 1).
        def bucket(w: int) -> int:
            return max(8, 1 << (w - 1).bit_length())

        self.groups = sorted({bucket(w) for w in widths})
        self.members = [[m for m, w in enumerate(widths) if bucket(w) == b] for b in self.groups]
        self.embed, self.w1, self.b1, self.w2, self.b2 = (nn.ParameterList() for _ in range(5))
        for i, (H, members) in enumerate(zip(self.groups, self.members)):
            n = len(members)
            own = torch.tensor([float(widths[m]) for m in members])  # (n,)
            self.embed.append(nn.Parameter(torch.randn(n, V, e, generator=g)))
            self.w1.append(nn.Parameter(uniform((n, K * e, H), 1 / math.sqrt(K * e))))
            self.b1.append(nn.Parameter(uniform((n, 1, H), 1 / math.sqrt(K * e))))
            self.w2.append(nn.Parameter(uniform((n, H, V), 1.0) / own.sqrt()[:, None, None]))
            self.b2.append(nn.Parameter(uniform((n, 1, V), 1.0) / own.sqrt()[:, None, None]))
            self.register_buffer(f"mask{i}", (torch.arange(H)[None, :] < own[:, None]).float()[:, None, :])
        self.register_buffer("contexts", all_contexts(V, K))
        # every context as K one-hot rows, (V^K K, V): the embedding lookup of all contexts is then one
        # batched matmul, whose backward is another (indexing backward scatters with atomic adds, slower)
        self.register_buffer(
            "one_hot", torch.nn.functional.one_hot(self.contexts.reshape(-1), V).float(), persistent=False
        )

    def num_params(self) -> list[int]:
        """Parameters of each student (padding excluded)."""
        return [student_params(self.vocab_size, self.order, w, self.embed_dim) for w in self.widths]

    def forward(self, contexts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every student: contexts (C, K) ids (default: all V^K contexts) -> (M, C, V)."""
        ctx = self.contexts if contexts is None else contexts
        C = ctx.shape[0]
        out = [None] * len(self.widths)
        for i, members in enumerate(self.members):
            n = len(members)
            if contexts is None:  # all contexts: (C K, V) one-hot @ (n, V, e), exactly the looked-up rows
                x = (self.one_hot @ self.embed[i]).reshape(n, C, -1)  # (n, C, K e)
            else:
                x = self.embed[i][torch.arange(n)[:, None, None], ctx[None]].flatten(2)  # (n, C, K e)
            h = torch.tanh(x @ self.w1[i] + self.b1[i]) * getattr(self, f"mask{i}")  # (n, C, H)
            logits = h @ self.w2[i] + self.b2[i]  # (n, C, V)
            for j, m in enumerate(members):
                out[m] = logits[j]
        return torch.stack(out)


def teacher_source(
    vocab_size: int,
    order: int,
    width: int = 3,
    embed_dim: int = 4,
    scale: float = 3.0,
    seed: int = 0,
    rate: float | None = None,
):
    """A structured Markov source: its table is the softmax of a random student of width `width`.

    The table has V^K (V - 1) entries but is generated by ``student_params(V, K, width, embed_dim)``
    numbers: it is compressible, and a student of the same width can represent it exactly. `scale`
    multiplies the teacher's weights (larger: peakier rows, lower entropy). With `rate` given, the scale
    is instead chosen (by bisection) so that the source's entropy rate equals `rate` to 1e-6 nats, which
    makes it comparable with another source of that rate.
    """
    from anatomy.data import MarkovSource

    if not (is_number(scale) and 0 < scale < math.inf):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    check_int("width", width, lo=1)
    teacher = MLPStudents(vocab_size, order, [width], embed_dim, seed=seed)
    weights = [p.detach().clone() for p in teacher.parameters()]

    def table(s: float) -> np.ndarray:  # (V^K, V): the next-token table of the teacher scaled by s
        # every weight times s (not linear in the logits, because of the tanh)
        with torch.no_grad():
            for p, w in zip(teacher.parameters(), weights):
                p.copy_(w * s)
            return torch.softmax(teacher()[0].double(), dim=-1).numpy()

    def build(s: float):
        return MarkovSource.from_table(table(s).reshape((vocab_size,) * (order + 1)))

    if rate is None:
        return build(float(scale))

    def excess(log_s: float) -> float:  # entropy rate at scale exp(log_s), minus the target
        return _entropy_rate(table(math.exp(log_s))) - rate

    # find log(scale) with rate(scale) = rate: regula falsi (Illinois variant) on a bracket in log space.
    # The entropy rate falls as the scale grows. The bracket grows from scale 1 by doubling, so it never
    # reaches the huge scales whose near-deterministic tables have no well-conditioned stationary
    # distribution (a fixed bracket up to 100 made MarkovSource fail for some seeds).
    a, fa = math.log(1e-2), excess(math.log(1e-2))
    for b in (math.log(2.0**k) for k in range(7)):  # scales 1, 2, 4, ..., 64
        fb = excess(b)
        if fa <= 0 or fb <= 0:
            break
        a, fa = b, fb
    if not fa > 0 > fb:
        raise ValueError(f"rate={rate!r} is out of reach for this teacher (try another width or seed)")
    side, c = 0, a
    for _ in range(100):
        c = (a * fb - b * fa) / (fb - fa)
        fc = excess(c)
        if abs(fc) < 1e-7:
            break
        if fc > 0:
            a, fa = c, fc
            if side == 1:
                fb /= 2
            side = 1
        else:
            b, fb = c, fc
            if side == -1:
                fa /= 2
            side = -1
    return build(math.exp(c))


def _entropy_rate(P: np.ndarray) -> float:
    """Entropy rate (nats) of the order-K chain with next-token table P, (V^K, V), by power iteration.

    The same quantity as ``MarkovSource.entropy_rate``, without its dense V^K x V^K linear solve: the
    rate-matching search of :func:`teacher_source` evaluates it many times, and a multi-threaded BLAS solve
    of that size costs far more CPU than this on a busy machine. Context c = (x_1..x_K) moves to
    (x_2..x_K, x) with probability P[c, x].
    """
    C, V = P.shape
    pi = np.full(C, 1.0 / C)
    for _ in range(100_000):
        new = (pi[:, None] * P).reshape(V, C).sum(0)  # sum over x_1: the distribution of the next context
        if np.abs(new - pi).sum() < 1e-15:
            break
        pi = new
    row_entropy = -(P * np.log(np.clip(P, 1e-300, None))).sum(1)
    return float(new @ row_entropy)


@dataclass
class PopulationFit:
    """Result of :func:`fit_population`: one entry per student, in the order given."""

    source: list[int]  # index into the `sources` argument
    width: list[int]
    params: list[int]
    kl: list[float]  # exact KL(P || q) under the stationary context distribution, nats
    kl_seen: list[float]  # the same, restricted to the contexts trained on
    kl_unseen: list[float]  # ... and to the held-out contexts (nan if none were held out)
    loss: list[float]  # exact population cross-entropy, nats (= entropy rate + kl)
    history: list[list[float]] = field(default_factory=list)  # kl per student every `record_every` steps
    steps: int = 0


def _stationary_weights(source) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(source._pi.copy()), torch.from_numpy(source._T.copy())


def fit_population(
    sources: Sequence,
    widths: Sequence[int],
    *,
    steps: int = 800,
    lr: float = 0.03,
    embed_dim: int = 4,
    train_fraction: float | Sequence[float] = 1.0,
    seed: int = 0,
    record_every: int = 50,
) -> PopulationFit:
    """Train one student per (source, width) on the exact population loss; return exact KLs.

    sources: MarkovSources of the same vocabulary and order. widths: student widths. Every student is
    trained full-batch with Adam for `steps` steps on sum_c w(c) sum_x P(x|c) (-log q(x|c)) with
    w = the stationary context distribution. With train_fraction < 1 (one value, or one per source), a
    source's contexts are split at random (seeded): its students see only that fraction of contexts, and
    `kl_unseen` measures how well what they learned carries over to the contexts they never saw
    (generalization without noise). The same source may be listed twice with different fractions.
    """
    if not sources:
        raise ValueError("sources must name at least one MarkovSource")
    check_float("lr", lr, lo=0, lo_open=True)
    V, K = sources[0].vocab_size, sources[0].order
    for s in sources:
        if (s.vocab_size, s.order) != (V, K):
            raise ValueError("all sources must have the same vocab_size and order")
    steps = check_int("steps", steps, lo=1)
    record_every = check_int("record_every", record_every, lo=1)
    if not (is_number(lr) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    single = is_number(train_fraction) or isinstance(train_fraction, bool)  # a bool: refused below, named
    fractions = [train_fraction] * len(sources) if single else list(train_fraction)
    if len(fractions) != len(sources) or not all(is_number(f) and 0 < f <= 1 for f in fractions):
        raise ValueError(f"train_fraction must be in (0, 1], one value or one per source: {train_fraction!r}")

    widths = [check_int("widths[i]", w, lo=1) for w in widths]
    pairs = [(i, w) for i in range(len(sources)) for w in widths]
    students = MLPStudents(V, K, [w for _, w in pairs], embed_dim, seed=seed)
    C = V**K
    pis, tables = zip(*(_stationary_weights(s) for s in sources))
    pi = torch.stack([pis[i] for i, _ in pairs])  # (M, C)
    P = torch.stack([tables[i] for i, _ in pairs])  # (M, C, V)
    seen = torch.ones(len(sources), C, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 7919)
    for i, fraction in enumerate(fractions):
        if fraction < 1:
            seen[i] = 0.0
            seen[i, torch.randperm(C, generator=g)[: max(1, round(fraction * C))]] = 1.0
    seen = torch.stack([seen[i] for i, _ in pairs])  # (M, C)
    weight = pi * seen
    weight = weight / weight.sum(-1, keepdim=True)
    neg_entropy = (P * torch.log(P.clamp_min(1e-300))).sum(-1)  # (M, C): sum_x P log P
    P32, neg_entropy32, weight32 = P.float(), neg_entropy.float(), weight.float()

    def kl_per_context(logits: torch.Tensor, exact: bool = False) -> torch.Tensor:  # (M, C)
        if exact:
            return neg_entropy - (P * torch.log_softmax(logits.double(), -1)).sum(-1)
        return neg_entropy32 - (P32 * torch.log_softmax(logits, -1)).sum(-1)

    def subset_kl(kl_c: torch.Tensor, mask: torch.Tensor) -> list[float]:
        w = pi * mask
        total = w.sum(-1)
        out = (w * kl_c).sum(-1) / total.clamp_min(1e-300)
        return [float(v) if t > 0 else math.nan for v, t in zip(out, total)]

    # foreach: one kernel per op over all tensors; eager: the same Adam, without importing torch._dynamo
    optimizer = eager_optimizer(torch.optim.Adam)(students.parameters(), lr=lr, foreach=True)
    history: list[list[float]] = []
    for step in range(steps):
        logits = students()
        kl_c = kl_per_context(logits)
        loss = (weight32 * kl_c).sum()  # = cross-entropy minus a constant: the same gradients
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % record_every == 0:
            history.append(subset_kl(kl_c.detach().double(), torch.ones_like(seen)))
    with torch.no_grad():
        kl_c = kl_per_context(students(), exact=True)
    kl = subset_kl(kl_c, torch.ones_like(seen))
    history.append(kl)
    rates = [s.entropy_rate() for s in sources]
    return PopulationFit(
        source=[i for i, _ in pairs],
        width=[w for _, w in pairs],
        params=students.num_params(),
        kl=kl,
        kl_seen=subset_kl(kl_c, seen),
        kl_unseen=subset_kl(kl_c, 1.0 - seen),
        loss=[rates[i] + k for (i, _), k in zip(pairs, kl)],
        history=[list(h) for h in zip(*history)],
        steps=steps,
    )


# ---------------------------------------------------------------------------------------------
# A family of decoders on real text
# ---------------------------------------------------------------------------------------------


def decoder_config(d_model: int, n_layers: int, vocab_size: int, seq_len: int, head_dim: int = 16):
    """A Llama-style decoder whose non-embedding parameters are ~12 L d^2 (Kaplan et al.'s count).

    SwiGLU with d_ff = round(8 d / 3) (three d x d_ff matrices = 8 d^2, like a 4d GELU MLP), attention
    4 d^2, no biases, RMSNorm gains (2 d per layer + d). Heads of `head_dim` (one head if d < head_dim).
    """
    from anatomy.model import Config

    d = check_int("d_model", d_model, lo=2)
    L = check_int("n_layers", n_layers, lo=1)
    head_dim = check_int("head_dim", head_dim, lo=2)
    n_heads = max(1, d // head_dim)
    if d % n_heads:
        raise ValueError(f"d_model={d} must be a multiple of n_heads= {n_heads} (head_dim {head_dim})")
    vocab_size, seq_len = check_int("vocab_size", vocab_size, lo=2), check_int("seq_len", seq_len, lo=1)
    return Config(
        vocab_size=vocab_size,
        d_model=d,
        n_layers=L,
        n_heads=n_heads,
        d_ff=round(8 * d / 3),
        max_seq_len=seq_len,
    )


def scaling_run(
    configs: Sequence,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    *,
    tokens: int,
    batch_size: int = 32,
    seq_len: int = 32,
    lr: float | Sequence[float] = 5e-3,
    n_checkpoints: int = 6,
    val_batches: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Train one decoder per config on the same batches for the same token budget; record held-out loss.

    Every model sees exactly the same sequence of training batches (seeded by `seed`) and is evaluated
    on the same `val_batches` x `batch_size` held-out windows of `val_ids` at `n_checkpoints` evenly spaced
    points, the last at the end of training. The number of steps is rounded to a multiple of
    `n_checkpoints`, so the budget actually trained is within one checkpoint interval of `tokens`.
    lr: one peak learning rate for all, or one per config. Returns one dict per config: ``params``
    (non-embedding), ``params_total``, ``d_model``, ``n_layers``, ``lr``, ``tokens`` (token counts at
    the checkpoints), ``val_loss`` (nats per token at each checkpoint), ``val_loss_se`` (standard error of
    the final held-out loss, from its spread over the `val_batches` batches), ``train_loss`` (mean of the
    last 5% of steps), ``seconds`` (wall-clock, training and evaluation).
    """
    from anatomy.data import token_batches
    from anatomy.model import Transformer
    from anatomy.train import evaluate, train

    tokens = check_int("tokens", tokens, lo=1)
    if isinstance(configs, (str, bytes)) or not hasattr(configs, "__iter__") or not list(configs):
        raise ValueError(f"configs must be a non-empty sequence of Configs, got {configs!r}")
    check_tensor("train_ids", train_ids, kind="int")
    check_tensor("val_ids", val_ids, kind="int")
    batch_size, seq_len = check_int("batch_size", batch_size, lo=1), check_int("seq_len", seq_len, lo=1)
    n_checkpoints = check_int("n_checkpoints", n_checkpoints, lo=1)
    configs = list(configs)
    lrs = [lr] * len(configs) if is_number(lr) or isinstance(lr, bool) else list(lr)
    if len(lrs) != len(configs) or not all(is_number(v) and v > 0 for v in lrs):
        raise ValueError(f"lr must be a number > 0 or one per config ({len(configs)}), got {lr!r}")
    every = max(1, round(tokens / (batch_size * seq_len) / n_checkpoints))
    steps = every * n_checkpoints
    batches = token_batches(train_ids, batch_size, seq_len, seed=seed)
    val = token_batches(val_ids, batch_size, seq_len, seed=seed + 1)
    val_set = [val(i) for i in range(check_int("val_batches", val_batches, lo=1))]

    def one(config, peak: float) -> dict:
        torch.manual_seed(seed)
        model = Transformer(config)
        start = time.perf_counter()
        # the checkpoints are after training steps: the untrained model is not evaluated
        history = train(
            model,
            batches,
            steps=steps,
            lr=peak,
            eval_every=every,
            progress=progress,
            eval_fn=lambda m: evaluate(m, val_set, len(val_set)),
            eval_at_start=False,
        )
        checkpoints = [(s, ev["loss"]) for s, ev in history.evals]
        per_batch = [evaluate(model, [b], 1) for b in val_set]  # the final model, batch by batch
        return {
            "d_model": config.d_model,
            "n_layers": config.n_layers,
            "lr": peak,
            "params": model.num_params(),
            "params_total": model.num_params(non_embedding=False),
            "tokens": [s * batch_size * seq_len for s, _ in checkpoints],
            "val_loss": [v for _, v in checkpoints],
            "val_loss_se": float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch)))
            if len(per_batch) > 1
            else math.nan,
            "train_loss": history.final_loss,
            "seconds": time.perf_counter() - start,
        }

    # the runs share nothing (each seeds itself): one process per core, the widest first, the same results
    jobs = [partial(one, config, peak) for config, peak in zip(configs, lrs)]
    results = run_all(jobs, costs=[c.d_model for c in configs]) if not progress else [job() for job in jobs]
    return results


def width_scaled_lr(d_model: int, base: float = 0.01, base_width: int = 32, cap: float = 0.02) -> float:
    """A peak learning rate that shrinks like 1/sqrt(width): base at base_width, at most `cap`.

    Narrow models tolerate (and, on a short budget, need) larger steps than wide ones; one learning rate
    for the whole family would under-train the smallest models and steepen the fitted exponent.
    """
    d = check_int("d_model", d_model, lo=1)
    check_float("base", base, lo=0, lo_open=True)
    check_int("base_width", base_width, lo=1)
    check_float("cap", cap, lo=0, lo_open=True)
    return min(cap, base * math.sqrt(base_width / d))
