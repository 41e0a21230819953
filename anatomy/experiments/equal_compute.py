"""The objectives at equal compute: one question for every family (`predict_token`:
the distribution of one text token given the same visible context), the runs at a matched FLOP budget,
and the masking-rate trade-off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import nn

from anatomy._checks import check_instance, check_int
from anatomy.experiments.parallel import run_all
from anatomy.experiments.signal_density import _markov, bayes_loss
from anatomy.objectives import (
    SpecialTokens,
    _check_objective,
    _check_seqs,
    _check_text_ids,
    _step_generator,
    loss_fn,
    masked_lm_batch,
    objective_batches,
    text_windows,
    train_step_flops,
)

__all__ = [
    "DEFAULT_RUNS",
    "FAMILY_OF",
    "ObjectiveRun",
    "build_model",
    "compare_objectives",
    "masking_tradeoff",
    "plot_comparison",
    "plot_masking_tradeoff",
    "predict_token",
    "token_cross_entropy",
]


# ---------------------------------------------------------------------------------------------------------
# One question for every family: the distribution of one text token given the same visible context
# ---------------------------------------------------------------------------------------------------------


def _text_log_softmax(logits: torch.Tensor, n_text: int) -> torch.Tensor:
    return torch.log_softmax(logits[..., :n_text].float(), dim=-1)


@torch.no_grad()
def predict_token(
    model: nn.Module, objective: str, left: torch.Tensor, right: torch.Tensor | None, special: SpecialTokens
) -> torch.Tensor:
    """log P(x_t = v | left context, right context) over text tokens v, for a model trained on `objective`.

    left: (E, L) the tokens before x_t; right: (E, R) the tokens after it, or None (R = 0: the task is
    continuation). Every family answers from exactly this information, each through its own interface:
    causal and prefix LMs by Bayes' rule over their left-to-right factorisation when R > 0 (scoring all
    candidates v with the right context after them: exact, but V times the inference compute); a masked
    LM by one [MASK] at x_t; an encoder-decoder by a sentinel at x_t (and, when R > 0, a second sentinel
    after the right context standing for the unseen rest of the text, as in T5's inputs, whose last span
    always ends the text) and the first token the decoder writes after that sentinel.
    Returns (E, n_text), normalised over text tokens.
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    _check_objective(objective)
    left = _check_seqs(left, "left", min_len=1)
    _check_text_ids(left, special, "left")
    E = left.shape[0]
    if right is not None:
        right = _check_seqs(right, "right", min_len=1)
        _check_text_ids(right, special, "right")
        if right.shape[0] != E:
            raise ValueError(
                f"left and right must have the same number of rows, got {E} and {right.shape[0]}"
            )
    R = 0 if right is None else right.shape[1]
    V = special.n_text
    was_training = model.training
    model.eval()
    try:
        if objective == "masked":
            parts = [left, torch.full((E, 1), special.mask_id)] + ([right] if R else [])
            logits = model(torch.cat(parts, 1))
            return _text_log_softmax(logits[:, left.shape[1]], V)
        if objective == "span":
            s0, s1 = special.sentinel_ids[:2]
            parts = [left, torch.full((E, 1), s0)] + ([right, torch.full((E, 1), s1)] if R else [])
            enc = torch.cat(parts + [torch.full((E, 1), special.eos_id)], 1)
            dec = torch.tensor([[special.decoder_start_id, s0]]).expand(E, 2)
            logits = model(dec, encoder_input_ids=enc)
            return _text_log_softmax(logits[:, 1], V)
        kwargs = {"prefix_len": left.shape[1]} if objective == "prefix" else {}
        if R == 0:
            logits = model(left, **kwargs)
            return _text_log_softmax(logits[:, -1], V)
        # Bayes' rule: log P(v | left) + sum_s log P(right_s | left, v, right_<s), for every candidate v.
        # The left context is the same for all V candidates and (causal, or a prefix of exactly L) its
        # keys and values do not depend on what follows, so it runs once, into a KV cache that every
        # candidate continuation then reuses: V times (1 + R) new positions instead of V times (L + 1 + R).
        L = left.shape[1]
        cache = model.new_cache(E, max_len=L + 1 + R)
        first = _text_log_softmax(model(left, cache, **kwargs)[:, -1], V)  # (E, V): log P(v | left)
        tail = torch.cat([torch.arange(V).repeat(E)[:, None], right.repeat_interleave(V, 0)], 1)
        rows = max(1, 8192 // (1 + R))
        scores = []
        for lo in range(0, E * V, rows):
            chunk = tail[lo : lo + rows]  # (b, 1 + R): one candidate, then the right context
            owners = torch.arange(lo, lo + chunk.shape[0]) // V
            shared = model.new_cache(chunk.shape[0], max_len=L + 1 + R)
            shared.claim(model.layers)  # filled by hand below with this model's own keys and values
            for layer in range(cache.n_layers):
                shared.update(layer, cache.keys(layer)[owners], cache.values(layer)[owners])
            shared.commit(left[owners])
            logp = _text_log_softmax(model(chunk[:, :R], shared, **kwargs), V)  # (b, R, V)
            rest = logp.gather(2, chunk[:, 1:, None])[..., 0].sum(1)
            scores.append(first[owners, chunk[:, 0]] + rest)
        joint = torch.cat(scores).view(E, V)
        return torch.log_softmax(joint, dim=-1)
    finally:
        model.train(was_training)


def token_cross_entropy(
    model: nn.Module,
    objective: str,
    windows: torch.Tensor,
    position: int | Sequence[int],
    special: SpecialTokens,
    *,
    right: int = 0,
    per_example: bool = False,
) -> float | torch.Tensor:
    """Mean -log P(x_t | x_<t, x_t+1..t+right) in nats over windows (E, N) and positions t.

    position: one t or several (each window is asked at each of them). right = 0: continuation (the next
    token from the left context alone); right > 0: infilling. When a causal model is asked for the
    continuation at several positions, one forward pass answers all of them. per_example: return the
    losses themselves, (E * len(positions),) float, instead of their mean (for standard errors).
    """
    if not isinstance(per_example, bool):
        raise TypeError(f"per_example must be True or False, got {per_example!r}")
    windows = _check_seqs(windows, "windows")
    if not isinstance(position, (int, np.integer, list, tuple, range)) or isinstance(position, bool):
        raise TypeError(f"position must be an int or a sequence of ints, got {type(position).__name__}")
    positions = [position] if isinstance(position, (int, np.integer)) else list(position)
    if not positions:
        raise ValueError("position must be an int or a non-empty sequence of ints")
    for t in positions:
        check_int("position", t, lo=1)
    check_int("right", right, lo=0)
    if max(positions) + right >= windows.shape[1]:
        raise ValueError(f"position + right must be < N = {windows.shape[1]}, got {max(positions)} + {right}")
    if objective == "causal" and right == 0 and len(positions) > 1:
        _check_text_ids(windows, special, "windows")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logp = _text_log_softmax(model(windows[:, : max(positions)]), special.n_text)
        finally:
            model.train(was_training)
        idx = torch.tensor(positions)
        picked = logp[:, idx - 1].gather(2, windows[:, idx, None])[..., 0]  # (E, len(positions))
        return -picked.t().reshape(-1) if per_example else float(-picked.mean())
    losses = []
    for t in positions:
        left = windows[:, :t]
        rhs = windows[:, t + 1 : t + 1 + right] if right else None
        logp = predict_token(model, objective, left, rhs, special)
        losses.append(-logp.gather(1, windows[:, t : t + 1]))
    return torch.cat(losses)[:, 0] if per_example else float(torch.cat(losses).mean())


# ---------------------------------------------------------------------------------------------------------
# The signal density chapter's comparison across objectives at equal compute
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ObjectiveRun:
    """One family trained with its objective, and its answers to the two shared questions."""

    name: str
    objective: str
    options: dict
    steps: int
    flops_per_step: int
    params: int  # all parameters (an encoder-decoder has two stacks)
    targets_seen: int  # loss-carrying positions over the whole run
    eval_flops: list[int]  # training FLOPs at each evaluation of the continuation loss (after step 0)
    continuation_curve: list[float]  # continuation loss (nats per token) at each evaluation
    continuation: float  # final: -log P(x_t | x_<t)
    infill: float  # final: -log P(x_t | x_<t, x_t+1..t+R)
    model: nn.Module | None = None
    infill_losses: list[float] | None = None  # the per-window infilling losses whose mean is `infill`

    @property
    def flops(self) -> int:
        return self.steps * self.flops_per_step


FAMILY_OF = {"causal": "causal", "masked": "bidirectional", "prefix": "prefix", "span": "encdec"}

DEFAULT_RUNS: dict[str, tuple[str, dict]] = {
    "decoder (causal LM)": ("causal", {}),
    "decoder, 15% of labels": ("causal", {"label_fraction": 0.15}),
    "encoder (masked LM)": ("masked", {}),
    "prefix LM": ("prefix", {}),
    "encoder-decoder (span corruption)": ("span", {}),
}


def build_model(objective: str, config) -> nn.Module:
    """The family that trains with `objective`: decoder, encoder, prefix LM or encoder-decoder."""
    from anatomy.encoder_decoder import EncoderDecoder
    from anatomy.model import Config, Transformer

    _check_objective(objective)
    check_instance("config", config, Config, "an anatomy Config")
    if objective == "span":
        return EncoderDecoder(replace(config, mask="causal"))
    return Transformer(replace(config, mask=FAMILY_OF[objective]))


def compare_objectives(
    train_ids: torch.Tensor,
    eval_windows: torch.Tensor,
    special: SpecialTokens,
    config,
    *,
    runs: dict[str, tuple[str, dict]] | None = None,
    flops_budget: int | None = None,
    steps: int = 200,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 3e-3,
    positions: Sequence[int] | None = None,
    infill_position: int | None = None,
    right: int = 8,
    n_curve: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, ObjectiveRun]:
    """Train one model per run on the same text windows at (nearly) equal compute; ask each the same.

    runs: name -> (objective, batch options), default `DEFAULT_RUNS`: the four families, plus a decoder
    that keeps the loss on only 15% of positions (the same density as BERT, the causal task unchanged).
    Compute: counted training FLOPs (`train_step_flops`). flops_budget None: `steps` steps of the first run;
    each run gets round(budget / its FLOPs per step) steps. Every model starts from the same seed, sees
    the same text windows in the same order, and uses the same optimiser settings.
    Evaluation (`predict_token`) on eval_windows (E, N): the continuation loss -log P(x_t | x_<t) averaged
    over `positions` (default: the second half of the window) and the infilling loss
    -log P(x_t | x_<t, the next `right` tokens) at t = `infill_position` (default N - right - 4), in nats
    per token. The continuation loss is also tracked during training (`n_curve` points after step 0, the
    untrained model is not evaluated; the last one is the final value).
    """
    from anatomy.train import train

    runs = DEFAULT_RUNS if runs is None else runs
    N = eval_windows.shape[1]
    positions = list(range(N // 2, N)) if positions is None else list(positions)
    infill_position = N - right - 4 if infill_position is None else infill_position
    if not runs:
        raise ValueError("runs must name at least one (objective, options) pair")
    for obj, _ in runs.values():
        _check_objective(obj)
    windows = text_windows(train_ids, batch_size, seq_len, seed=seed)

    def batches(obj: str, options: dict):
        return objective_batches(obj, windows, special, seed=seed, **options)

    per_step = {}
    for name, (obj, options) in runs.items():
        torch.manual_seed(seed)
        per_step[name] = train_step_flops(build_model(obj, config), loss_fn(obj), batches(obj, options)(0))
    if flops_budget is None:
        check_int("steps", steps, lo=1)
        flops_budget = steps * per_step[next(iter(runs))]

    def one(name: str, obj: str, options: dict) -> ObjectiveRun:
        n_steps = max(1, round(flops_budget / per_step[name]))
        every = max(1, n_steps // n_curve)
        torch.manual_seed(seed)
        model = build_model(obj, config)

        def eval_fn(m: nn.Module) -> dict[str, float]:
            return {"continuation": token_cross_entropy(m, obj, eval_windows, positions, special)}

        hist = train(
            model,
            batches(obj, options),
            steps=n_steps,
            lr=lr,
            loss_fn=loss_fn(obj),
            eval_fn=eval_fn,
            eval_every=every,
            eval_at_start=False,  # the curves start after training steps
            progress=progress,
            seed=seed,
        )
        infill = token_cross_entropy(
            model, obj, eval_windows, infill_position, special, right=right, per_example=True
        )
        return ObjectiveRun(
            name=name,
            objective=obj,
            options=dict(options),
            steps=n_steps,
            flops_per_step=per_step[name],
            params=sum(p.numel() for p in model.parameters()),
            targets_seen=hist.tokens[-1],
            eval_flops=[s * per_step[name] for s, _ in hist.evals],
            continuation_curve=[r["continuation"] for _, r in hist.evals],
            continuation=hist.evals[-1][1]["continuation"],
            infill=float(infill.mean()),
            model=model,
            infill_losses=infill.tolist(),
        )

    # the runs share nothing (each seeds itself): one process per core, the same results as a loop
    jobs = [partial(one, name, obj, options) for name, (obj, options) in runs.items()]
    done = run_all(jobs) if not progress else [job() for job in jobs]
    results = dict(zip(runs, done))
    return results


def masking_tradeoff(
    source,
    rates: Sequence[float],
    *,
    seqs: torch.Tensor | None = None,
    n: int = 16,
    seq_len: int = 64,
    replace=(0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[float]]:
    """Exact Bayes-optimal masked-LM loss per target and per token of text, for each masking rate.

    More masking gives more targets per sequence, but each target sees less context and is harder.
    Bernoulli selection (so the Bayes loss is exact with 80/10/10), on `seqs` (n, N) from the source or
    n fresh sequences of seq_len. Returns lists aligned with `rates`:
    "per_target" (nats), "targets_per_token", and "per_token" = their product (nats of optimal loss per
    token of text: how much is left to predict in total).
    """
    _markov(source)
    if isinstance(rates, (str, bytes)) or not rates:
        raise ValueError(f"rates must be a non-empty sequence of masking rates, got {rates!r}")
    check_int("n", n, lo=1)
    special = SpecialTokens(source.vocab_size)
    if seqs is None:
        seqs = source.sample(n, seq_len, _step_generator(seed, -2))
    out: dict[str, list[float]] = {"per_target": [], "targets_per_token": [], "per_token": []}
    for rate in rates:
        # the same generator state for every rate: the masks are nested (a position masked at one rate is
        # masked at every higher rate), so the curves differ by the rate, not by the luck of the draw
        batch = masked_lm_batch(
            seqs,
            special,
            rate=rate,
            replace=replace,
            selection="bernoulli",
            generator=_step_generator(seed, -3),
        )
        losses = bayes_loss("masked", source, batch, special, rate=rate, replace=replace)
        share = len(losses) / seqs.numel()
        out["per_target"].append(float(losses.mean()))
        out["targets_per_token"].append(share)
        out["per_token"].append(float(losses.mean()) * share)
    return out


_RUN_STYLE = {
    "causal": ("#0072B2", "-"),
    "causal15": ("#0072B2", ":"),
    "masked": ("#D55E00", "-"),
    "prefix": ("#009E73", "-"),
    "span": ("#CC79A7", "-"),
}


def _style(run: ObjectiveRun) -> tuple[str, str]:
    key = (
        "causal15"
        if run.objective == "causal" and run.options.get("label_fraction", 1.0) < 1
        else run.objective
    )
    return _RUN_STYLE[key]


def plot_comparison(results: dict[str, ObjectiveRun], baseline: float | None = None):
    """Continuation loss during training against counted FLOPs (left); final continuation and infilling
    losses (right). baseline: the loss of a model that ignores the context (e.g. the unigram entropy)."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    for name, run in results.items():
        color, ls = _style(run)
        ax1.plot(
            np.asarray(run.eval_flops) / 1e9,
            run.continuation_curve,
            ls,
            marker="o",
            ms=3,
            color=color,
            label=name,
        )
    if baseline is not None:
        ax1.axhline(baseline, color="#777777", lw=0.8, ls="--")
        ax1.text(
            ax1.get_xlim()[1], baseline, "ignores context ", va="top", ha="right", fontsize=9, color="#555555"
        )
    ax1.set_xlabel("training compute (GFLOPs, counted)")
    ax1.set_ylabel("continuation loss (nats per character)")
    ax1.set_title("Predict the next character, left context only")
    ax1.legend(fontsize=8.5)
    names = list(results)
    y = np.arange(len(names))[::-1]
    for yi, n in zip(y, names):
        r = results[n]
        color = _style(r)[0]
        ax2.plot([r.infill, r.continuation], [yi, yi], "-", color="#cccccc", lw=2, zorder=1)
        ax2.plot(r.continuation, yi, "o", ms=8, color=color, zorder=2)
        ax2.plot(r.infill, yi, "D", ms=7, mfc="white", mec=color, mew=2, zorder=2)
    ax2.plot([], [], "o", color="#555555", label="continuation")
    ax2.plot([], [], "D", mfc="white", mec="#555555", mew=2, label="infilling")
    if baseline is not None:
        ax2.axvline(baseline, color="#777777", lw=0.8, ls="--")
    ax2.set_yticks(y, names, fontsize=9)
    ax2.set_xlabel("held-out loss (nats per character, lower is better)")
    ax2.set_title("Both questions, at the end of training")
    ax2.legend(fontsize=8.5, loc="lower left")
    fig.tight_layout()
    return fig


def plot_masking_tradeoff(
    rates: Sequence[float], tradeoff: dict[str, list[float]], rate: float, example: str
):
    """One frame of the masking-rate explorer: an example masked at `rate`, and the exact trade-off curves."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 4.6))
    top = fig.add_axes((0.04, 0.80, 0.92, 0.17))
    top.axis("off")
    top.text(0.0, 0.5, example, family="monospace", fontsize=10, va="center", ha="left")
    top.set_title(f"masking rate {rate:.0%}: the encoder sees", loc="left", fontsize=10)
    ax1 = fig.add_axes((0.08, 0.12, 0.38, 0.56))
    ax2 = fig.add_axes((0.58, 0.12, 0.38, 0.56))
    i = list(rates).index(rate)
    ax1.plot(rates, tradeoff["per_target"], "o-", color="#D55E00")
    ax1.plot([rate], [tradeoff["per_target"][i]], "o", ms=11, mfc="none", mec="#222222")
    ax1.set_xlabel("masking rate")
    ax1.set_ylabel("optimal loss per target (nats)")
    ax1.set_title("each target gets harder", fontsize=10)
    ax2.plot(rates, tradeoff["targets_per_token"], "o-", color="#D55E00", label="targets per token")
    ax2.plot([rate], [tradeoff["targets_per_token"][i]], "o", ms=11, mfc="none", mec="#222222")
    ax2.set_xlabel("masking rate")
    ax2.set_ylabel("targets per token of text")
    ax2.set_title("but there are more of them", fontsize=10)
    return fig
