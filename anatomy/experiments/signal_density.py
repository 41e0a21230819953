"""Signal density: the exact Bayes-optimal loss of each objective on a Markov source, and how
much of the training signal each objective's labels carry (the label-density experiment)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import nn

from anatomy._checks import check_float, check_instance, check_int
from anatomy.experiments.parallel import run_all
from anatomy.objectives import (
    IGNORE,
    PrefixLMBatch,
    Seq2SeqBatch,
    SpecialTokens,
    _check_fraction,
    _check_objective,
    _step_generator,
    causal_lm_batch,
    train_step_flops,
)
from anatomy.train import next_token_loss

__all__ = ["DensityRun", "label_density_experiment", "bayes_loss", "plot_density", "show_example"]


# ---------------------------------------------------------------------------------------------------------
# Exact Bayes-optimal losses on a first-order Markov source
# ---------------------------------------------------------------------------------------------------------


def _markov(source) -> tuple[np.ndarray, np.ndarray]:
    if getattr(source, "order", None) != 1 or not hasattr(source, "P"):
        raise ValueError(
            f"source must be a first-order anatomy.data.MarkovSource (exact Bayes losses need "
            f"order=1), got {type(source).__name__}"
        )
    return np.asarray(source.P, dtype=np.float64), np.asarray(source.pi, dtype=np.float64)


def _bayes_next_token(T: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """-log T[x_t, y_t] at every labelled position (flattened, in order)."""
    keep = (y != IGNORE).numpy()
    return -np.log(T[x.numpy()[keep], y.numpy()[keep]])


def _bayes_masked(T, pi, x, labels, special, rate, replace) -> np.ndarray:
    """Exact posterior of each target by forward-backward over the corruption process (see bayes_loss).

    All rows of the batch go through the recursions together (arrays (B, N, V)); the losses come out in
    the order of the labels, row by row.
    """
    V = T.shape[0]
    if special.n_text != V:
        raise ValueError(f"special.n_text ({special.n_text}) must equal the source's vocab_size ({V})")
    p_mask, p_rand, p_keep = replace
    xs, ls = x.numpy(), labels.numpy()
    B, N = xs.shape
    # emission e(o_t | x_t) summed over corruption types, and restricted to "t is a target"
    is_mask = (xs == special.mask_id)[..., None]  # (B, N, 1)
    match = np.zeros((B, N, V))
    visible = ~is_mask[..., 0]
    match[visible, xs[visible]] = 1.0  # one-hot of the observed token where it is not [MASK]
    e_tgt = np.where(is_mask, rate * p_mask, rate * p_keep * match + rate * p_rand / V)
    e_all = np.where(is_mask, rate * p_mask, (1 - rate) * match + e_tgt)
    alpha = np.empty((B, N, V))
    a = pi * e_all[:, 0]
    alpha[:, 0] = a / a.sum(1, keepdims=True)
    for t in range(1, N):
        a = (alpha[:, t - 1] @ T) * e_all[:, t]
        alpha[:, t] = a / a.sum(1, keepdims=True)
    beta = np.empty((B, N, V))
    beta[:, -1] = 1.0
    for t in range(N - 2, -1, -1):
        bb = (e_all[:, t + 1] * beta[:, t + 1]) @ T.T
        beta[:, t] = bb / bb.sum(1, keepdims=True)
    rows, cols = np.nonzero(ls != IGNORE)  # row-major: the order of the labels, row by row
    prior = np.where((cols == 0)[:, None], pi, alpha[rows, np.maximum(cols - 1, 0)] @ T)
    post = prior * e_tgt[rows, cols] * beta[rows, cols]
    picked = post[np.arange(len(rows)), ls[rows, cols]]
    return -np.log(picked / post.sum(1))


def _span_structure(enc: list[int], special: SpecialTokens):
    """(left neighbour, right neighbour) of each span, from one encoder input row (None at an edge)."""
    sentinels = {s: i for i, s in enumerate(special.sentinel_ids)}
    body = [t for t in enc if t != special.eos_id]
    neighbours = []
    for i, t in enumerate(body):
        if t in sentinels:
            left = body[i - 1] if i > 0 and body[i - 1] not in sentinels else None
            right = body[i + 1] if i + 1 < len(body) and body[i + 1] not in sentinels else None
            neighbours.append((left, right))
    return neighbours


def _bayes_span_row(T, pi, enc: list[int], tgt: list[int], special: SpecialTokens) -> list[float]:
    """-log P(target_j | encoder input, targets before j) for one row, exactly (see bayes_loss)."""
    V = T.shape[0]
    spans = _span_structure(enc, special)
    k = len(spans)
    text_tgt = [t for t in tgt if 0 <= t < special.n_text]
    M = len(text_tgt)
    if k == 0 or M < k:
        raise ValueError("a span-corruption row must have at least one span and one token per span")
    powers = [np.eye(V)]
    for _ in range(M + 1):
        powers.append(powers[-1] @ T)

    def to_right(m: int, right: int | None) -> np.ndarray:
        """P(the token m + 1 steps later is `right`), as a vector over the current token."""
        return np.ones(V) if right is None else powers[m + 1][:, right]

    # w[j][l]: total probability of span j having some content of length l, given its left token
    # (a vector over that left token, so the first span of a row can start from the stationary law).
    # G[j][R]: sum over compositions of R tokens into spans j..k-1 (each >= 1) of the product of w.
    def span_weight(j: int, length: int) -> np.ndarray:
        return to_right(length, spans[j][1])

    G = np.zeros((k + 1, M + 1))
    G[k, 0] = 1.0
    for j in range(k - 1, -1, -1):
        left = spans[j][0]
        for R in range(1, M + 1):
            total = 0.0
            for length in range(1, R + 1):
                if G[j + 1, R - length] == 0.0:
                    continue
                w = span_weight(j, length)
                start = w @ pi if left is None else w[left]
                total += start * G[j + 1, R - length]
            G[j, R] = total

    if not tgt or tgt[0] != special.sentinel_ids[0]:
        raise ValueError(f"targets must start with sentinel {special.sentinel_ids[0]}")
    losses = [0.0]  # the first sentinel is certain
    pos, R = 1, M  # R: span tokens not yet written
    for j in range(k):
        left, right = spans[j]
        prev, i = left, 0  # the token before the next one (None: the span starts the text)
        while True:
            # continue with x: step[x] * H[x], H[x] = sum_m P(right, m + 1 steps after x) G[j + 1, R - 1 - m]
            H = np.zeros(V)
            for m in range(R):
                if G[j + 1, R - 1 - m] != 0.0:
                    H += to_right(m, right) * G[j + 1, R - 1 - m]
            cont = (pi if prev is None else T[prev]) * H
            # end span j here (only after at least one token): the text goes on with `right`
            end = 0.0
            if i >= 1:
                end = (1.0 if right is None else T[prev, right]) * G[j + 1, R]
            Z = cont.sum() + end
            token = tgt[pos]
            pos += 1
            if 0 <= token < special.n_text:
                losses.append(-math.log(cont[token] / Z))
                prev, i, R = token, i + 1, R - 1
                continue
            expected = special.sentinel_ids[j + 1] if j + 1 < k else special.eos_id
            if token != expected:
                raise ValueError(f"target {pos - 1} should be {expected}, got {token}")
            losses.append(-math.log(end / Z))  # the next sentinel (or EOS) says: span j ended
            break
    return losses


def bayes_loss(
    objective: str,
    source,
    batch,
    special: SpecialTokens | None = None,
    *,
    rate: float = 0.15,
    replace: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> np.ndarray:
    """The Bayes-optimal loss (nats) at every target of `batch`, for text from a first-order Markov source.

    Returns float64 (n_targets,), in the order of the labels (row by row). Its mean is the loss of the
    best possible model for this batch; a trained model's loss minus it is the model's excess (a KL).

    causal, prefix: -log T[x_{t-1}, x_t]. masked: the posterior of each target given the corrupted input,
    by forward-backward over the hidden clean sequence with the corruption process as emission
    (`rate`, `replace` as in `masked_lm_batch`). It is exact when the corruption is independent per
    position (selection="bernoulli") and, whatever the selection, when every target is a [MASK]
    (replace=(1, 0, 0)); for exact-count selection with random/kept targets it treats positions as
    independent. With pure masking it reduces to science's formula: for a masked x between visible a
    (l steps left) and b (r steps right), P(x) proportional to (T^l)[a, x] (T^r)[x, b].
    span: T5's noise-span lengths are a uniformly random composition, so the number of tokens left in
    each span is unknown; the exact predictive of each target (text token, next sentinel or EOS) sums
    over all compositions consistent with the input and the targets so far, by dynamic programming.
    """
    _check_objective(objective)
    T, pi = _markov(source)
    check_float("rate", rate, lo=0, hi=1, lo_open=True)
    if objective in ("causal", "masked"):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"a {objective} batch is (x, labels), got {type(batch).__name__}")
        x, y = batch
        if objective == "causal":
            return _bayes_next_token(T, x, y)
        if special is None:
            raise ValueError("masked needs special (a SpecialTokens)")
        return _bayes_masked(T, pi, x, y, special, _check_fraction("rate", rate), tuple(replace))
    if objective == "prefix":
        if not isinstance(batch, PrefixLMBatch):
            raise TypeError(f"a prefix batch is a PrefixLMBatch, got {type(batch).__name__}")
        return _bayes_next_token(T, batch.input_ids, batch.labels)
    if not isinstance(batch, Seq2SeqBatch):
        raise TypeError(f"a span batch is a Seq2SeqBatch, got {type(batch).__name__}")
    if special is None:
        raise ValueError("span needs special (a SpecialTokens)")
    if special.n_text != T.shape[0]:
        raise ValueError(
            f"special.n_text ({special.n_text}) must equal the source's vocab_size ({T.shape[0]})"
        )
    out: list[float] = []
    for enc, lab in zip(batch.encoder_input_ids.tolist(), batch.labels.tolist()):
        tgt = [t for t in lab if t != IGNORE]
        out.extend(_bayes_span_row(T, pi, enc, tgt, special))
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------------------
# The controlled experiment: the same task, only the share of supervised positions changes
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DensityRun:
    """Excess loss over the Bayes optimum during training, for each label fraction."""

    fractions: tuple[float, ...]
    steps: list[int]  # evaluation points (optimizer steps done)
    excess: dict[float, list[float]]  # fraction -> eval loss minus the exact Bayes loss (nats), per point
    labels: dict[float, list[int]]  # fraction -> labels seen so far, per point
    bayes: float  # the Bayes-optimal loss on the evaluation set (nats per token)
    flops_per_step: int  # counted FLOPs of one training step (the same for every fraction)

    def fit(self, fraction: float, start: float = 0.4) -> tuple[float, float]:
        """(a, b) of excess ~ a * steps**(-b), fitted in log-log on the points after `start` of the run."""
        s = np.asarray(self.steps[1:], dtype=float)
        e = np.asarray(self.excess[fraction][1:], dtype=float)
        keep = (s >= start * s[-1]) & (e > 0)
        b, log_a = np.polyfit(np.log(s[keep]), np.log(e[keep]), 1)
        return float(np.exp(log_a)), float(-b)

    def steps_to_reach(self, fraction: float, level: float) -> float:
        """Steps the `fraction` run needs to reach excess `level`, from its power-law fit."""
        a, b = self.fit(fraction)
        return float((a / level) ** (1.0 / b))

    def upto(self, step: int) -> DensityRun:
        """The same runs, cut at `step` (an evaluation point): what a run of `step` steps would have given.

        Exact, because the learning rate is constant after a warm-up whose length does not depend on the
        number of steps (:func:`label_density_experiment`), so the first `step` steps of a longer run are
        a run of `step` steps.
        """
        if step not in self.steps:
            raise ValueError(f"step must be one of the evaluation points {self.steps}, got {step!r}")
        n = self.steps.index(step) + 1
        return replace(
            self,
            steps=self.steps[:n],
            excess={f: e[:n] for f, e in self.excess.items()},
            labels={f: v[:n] for f, v in self.labels.items()},
        )

    def compute_multiplier(self, fraction: float, reference: float = 1.0) -> float:
        """How many times more steps (= compute) `fraction` needs than `reference` for the same excess.

        The level is the excess the `fraction` run reaches at its last step (from its fit); both runs
        have the same cost per step, so the ratio of steps is the ratio of compute.
        """
        level = self.fit(fraction)[0] * self.steps[-1] ** (-self.fit(fraction)[1])
        return self.steps[-1] / self.steps_to_reach(reference, level)


def label_density_experiment(
    source,
    fractions: Sequence[float] = (1.0, 0.5, 0.15),
    *,
    config=None,
    steps: int = 300,
    batch_size: int = 32,
    seq_len: int = 64,
    lr: float = 3e-3,
    eval_every: int = 20,
    n_eval: int = 64,
    warmup: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> DensityRun:
    """Train one causal LM per label fraction on a Markov source; everything else is identical.

    Same initial weights, same text batches, same steps and FLOPs; only the share of positions whose
    next-token loss is kept differs. The learning rate is constant after `warmup` steps (a number of steps,
    not a share of the run), so every point of a curve is comparable with every point of another (no run is
    annealed earlier than another) and the first k steps of a run are a run of k steps
    (:meth:`DensityRun.upto`). Returns the
    excess over the exact Bayes-optimal loss on a fixed evaluation sample.
    """
    from anatomy.model import Config, Transformer
    from anatomy.train import train

    T, _ = _markov(source)
    V = T.shape[0]
    if isinstance(fractions, (str, bytes)) or not fractions:
        raise ValueError(f"fractions must be a non-empty sequence of label fractions, got {fractions!r}")
    fractions = tuple(_check_fraction("fraction", f) for f in fractions)
    check_int("steps", steps, lo=1)
    check_int("warmup", warmup, lo=0)
    config = config or Config(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=seq_len, mlp="gelu", pos="learned"
    )
    eval_batch = causal_lm_batch(source.sample(n_eval, seq_len + 1, _step_generator(seed, -1)))
    bayes = float(bayes_loss("causal", source, eval_batch).mean())

    def eval_fn(model: nn.Module) -> dict[str, float]:
        return {"excess": next_token_loss(model, eval_batch)[0].item() - bayes}

    texts: dict[int, torch.Tensor] = {}  # every fraction trains on the same text: sample it once per step

    def text(step: int) -> torch.Tensor:
        if step not in texts:
            texts[step] = source.sample(batch_size, seq_len + 1, _step_generator(seed, step))
        return texts[step]

    def batches_for(f: float):
        def batches(step: int):
            return causal_lm_batch(text(step), label_fraction=f, generator=_step_generator(seed + 1, step))

        return batches

    torch.manual_seed(seed)
    flops = train_step_flops(Transformer(config), next_token_loss, batches_for(fractions[0])(0))

    def one(f: float):
        torch.manual_seed(seed)
        model = Transformer(config)
        hist = train(
            model,
            batches_for(f),
            steps=steps,
            lr=lr,
            warmup=warmup,
            schedule="constant",
            loss_fn=next_token_loss,
            eval_fn=eval_fn,
            eval_every=eval_every,
            progress=progress,
            seed=seed,
        )
        eval_steps = [s for s, _ in hist.evals]
        seen = [0] + hist.tokens
        return eval_steps, [r["excess"] for _, r in hist.evals], [seen[s] for s in eval_steps]

    # the runs share nothing (each seeds itself): one process per core, the same results as a loop
    jobs = [partial(one, f) for f in fractions]
    done = run_all(jobs) if not progress else [job() for job in jobs]
    eval_steps = done[0][0]
    excess = {f: d[1] for f, d in zip(fractions, done)}
    labels = {f: d[2] for f, d in zip(fractions, done)}
    return DensityRun(fractions, eval_steps, excess, labels, bayes, flops)


# ---------------------------------------------------------------------------------------------------------
# Showing a batch as text
# ---------------------------------------------------------------------------------------------------------


def show_example(
    objective: str,
    batch,
    special: SpecialTokens,
    decode: Callable[[list[int]], str],
    row: int = 0,
    *,
    mask_symbol: str = "█",
) -> tuple[str, str]:
    """(what the model reads, what it is trained to predict) for one row of a batch, as text.

    ``[MASK]`` shows as `mask_symbol`, sentinels as ``<0>``, ``<1>`` ..., EOS as ``</s>``; positions
    without a loss show as ``·`` in the target line of a masked or prefix batch.
    """
    _check_objective(objective)
    check_instance("special", special, SpecialTokens, "a SpecialTokens")
    if not callable(decode):
        raise TypeError(f"decode must be a function list[int] -> str, got {type(decode).__name__}")
    labels = batch.labels if hasattr(batch, "labels") else batch[1]
    check_int("row", row, lo=0, hi=len(labels) - 1)
    sentinel_names = {s: f"<{i}>" for i, s in enumerate(special.sentinel_ids)}

    def text(ids: list[int], hide: list[bool] | None = None) -> str:
        out = []
        for i, t in enumerate(ids):
            if hide is not None and hide[i]:
                out.append("·")
            elif t == special.mask_id:
                out.append(mask_symbol)
            elif t in sentinel_names:
                out.append(sentinel_names[t])
            elif t == special.eos_id:
                out.append("</s>")
            elif 0 <= t < special.n_text:
                out.append(decode([t]))
            else:
                out.append("?")
        return "".join(out)

    if objective == "span":
        labels = [t for t in batch.labels[row].tolist() if t != IGNORE]
        return text(batch.encoder_input_ids[row].tolist()), text(labels)
    if objective == "prefix":
        x, y = batch.input_ids[row].tolist(), batch.labels[row].tolist()
        prefix = text(x[: batch.prefix_len])
        return prefix + " | " + text(x[batch.prefix_len :]), text(
            [max(t, 0) for t in y], [t == IGNORE for t in y]
        )
    x, y = batch[0][row].tolist(), batch[1][row].tolist()
    return text(x), text([max(t, 0) for t in y], [t == IGNORE for t in y])


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def plot_density(run: DensityRun):
    """Excess loss over the Bayes optimum against training FLOPs (left) and against labels seen (right)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    shades = {1.0: "#0072B2", 0.5: "#56B4E9", 0.15: "#9ecae1"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    steps = np.asarray(run.steps[1:], dtype=float)
    for f in run.fractions:
        color = shades.get(f, None)
        label = f"{f:.0%} of positions supervised"
        ex = np.asarray(run.excess[f][1:])
        ax1.loglog(steps * run.flops_per_step / 1e9, ex, "o", ms=3, color=color, alpha=0.7)
        a, b = run.fit(f)
        fit_s = steps[steps >= 0.4 * steps[-1]]
        ax1.loglog(fit_s * run.flops_per_step / 1e9, a * fit_s ** (-b), "-", color=color, label=label)
        ax2.loglog(np.asarray(run.labels[f][1:]), ex, "o-", ms=3, color=color, label=label)
    low = min(run.fractions)
    if 1.0 in run.fractions and low < 1.0:
        a, b = run.fit(low)
        level = a * run.steps[-1] ** (-b)
        reach = run.steps_to_reach(1.0, level)
        ax1.axhline(level, color="#999999", lw=0.8, ls="--")
        ax1.annotate(
            "",
            xy=(reach * run.flops_per_step / 1e9, level),
            xytext=(run.steps[-1] * run.flops_per_step / 1e9, level),
            arrowprops={"arrowstyle": "<->", "color": "#444444"},
        )
        ax1.text(
            np.sqrt(reach * run.steps[-1]) * run.flops_per_step / 1e9,
            level * 1.08,
            f"x{run.compute_multiplier(low):.1f} compute",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax1.set_xlabel("training compute (GFLOPs, counted)")
    ax1.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_ylabel("excess loss over the Bayes optimum (nats per token)")
    ax1.set_title("Equal compute: the same batches, fewer labels")
    ax2.set_xlabel("labels seen (positions that carried a loss)")
    ax2.set_title("Equal labels")
    ax1.legend(loc="lower left")
    fig.tight_layout()
    return fig
