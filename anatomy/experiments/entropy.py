"""Entropy and the chain rule: the chapter's figures and the surprisal of a text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from anatomy._checks import check_instance, check_tensor
from anatomy.metrics import token_losses

__all__ = [
    "plot_chain_rule",
    "plot_context_curve",
    "plot_gibbs",
    "plot_kl_floor",
    "plot_kl_training",
    "plot_memorization",
    "plot_pll",
    "plot_surprisal",
    "text_surprisal",
]


# ---------------------------------------------------------------------------------------------
# Figures of the entropy and chain rule chapter
# ---------------------------------------------------------------------------------------------


def plot_chain_rule(terms: dict[str, np.ndarray], joint_entropy: float, orders: dict[str, Sequence[int]]):
    """Stacked bars: the chain-rule terms of each variable order, end to end, against the joint entropy.

    terms: order name -> the n conditional entropies (nats); orders: order name -> the variable order.
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    names = list(terms)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.7 * len(names)))
    cmap = plt.get_cmap("Blues")
    for row, name in enumerate(names):
        left = 0.0
        for i, (h, var) in enumerate(zip(terms[name], orders[name])):
            ax.barh(
                row,
                h,
                left=left,
                color=cmap(0.25 + 0.6 * i / max(1, len(terms[name]) - 1)),
                edgecolor="white",
                height=0.6,
            )
            given = "" if i == 0 else "|" + ",".join(str(int(v) + 1) for v in orders[name][:i])
            if h > 0.45:
                label = f"$X_{int(var) + 1}{given}$" if i < 2 else f"$X_{int(var) + 1}|\\ldots$"
                ax.text(left + h / 2, row, label, ha="center", va="center", fontsize=8, color="black")
            left += h
    ax.axvline(
        joint_entropy,
        color=COLORS["bidirectional"],
        lw=2,
        ls="--",
        label=f"brute force $H(X_1..X_n)$ = {joint_entropy:.4f} nats",
    )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("cumulative conditional entropy (nats)")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def plot_kl_training(steps, loss, kl, rate: float, excess=None):
    """Left: held-out loss of a decoder against steps, with the entropy rate; right: its KL on a log scale.

    steps, loss, kl: per checkpoint (nats/token). excess: optional loss - bayes on the same tokens.
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(steps, loss, "o-", color=COLORS["causal"], label="held-out next-token loss")
    a.axhline(rate, color="black", ls="--", lw=1.5, label=f"entropy rate H = {rate:.3f}")
    a.fill_between(steps, rate, loss, color=COLORS["causal"], alpha=0.12, label="the gap: KL(p || q)")
    a.set_xlabel("training steps")
    a.set_ylabel("nats per token")
    a.set_title("loss approaches the entropy rate from above")
    a.legend()
    b.semilogy(steps, kl, "o-", color=COLORS["causal"], label="exact KL to the source")
    if excess is not None:
        b.semilogy(
            steps,
            np.maximum(np.asarray(excess), 1e-4),
            "x:",
            color="gray",
            label="loss minus Bayes loss (same tokens)",
        )
    b.set_xlabel("training steps")
    b.set_ylabel("KL (nats per token, log scale)")
    b.set_title("the gap, read as a KL")
    b.legend()
    fig.tight_layout()
    return fig


def plot_kl_floor(floors: Sequence[float], ngram: Sequence[float], decoder: dict[int, float] | None = None):
    """Bars: the exact KL floor H(X_t | k previous) - H for each context length k; markers: measured models.

    ngram: test loss minus the rate of a count model with context k (k = 0, 1, ...); decoder: context
    length -> held-out loss minus the rate of the trained decoder at the positions with that much context.
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    ks = np.arange(len(floors))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(
        ks, floors, color="#dddddd", edgecolor="#777777", label="exact floor  $H(X_t\\,|\\,k$ previous$) - H$"
    )
    ax.plot(
        ks[: len(ngram)],
        ngram,
        "s",
        ms=8,
        color=COLORS["prefix"],
        label="count model with context $k$ (held out)",
    )
    if decoder:
        kd = sorted(decoder)
        ax.plot(
            kd,
            [decoder[k] for k in kd],
            "o",
            ms=7,
            color=COLORS["causal"],
            label="trained decoder, positions with $k$ tokens of context",
        )
    ax.set_xlabel("context length $k$ (tokens)")
    ax.set_ylabel("excess loss over the entropy rate (nats)")
    ax.set_xticks(ks)
    top = max([*floors, *ngram, *(decoder.values() if decoder else [])])
    ax.set_ylim(0, 1.45 * top)  # room for the legend above every marker
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_memorization(
    ngram_sizes, ngram_train, ngram_test, steps, dec_train, dec_held, rate: float, k: int = 3
):
    """Fitting the sample instead of the source: a count model on little data, an over-trained decoder."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.semilogx(ngram_sizes, ngram_train, "o-", color=COLORS["bidirectional"], label="training loss")
    a.semilogx(ngram_sizes, ngram_test, "s-", color=COLORS["causal"], label="held-out loss")
    a.axhline(rate, color="black", ls="--", lw=1.5, label="entropy rate")
    a.set_xlabel("training tokens (log scale)")
    a.set_ylabel("nats per token")
    a.set_title(f"count model, context k = {k}")
    a.legend()
    b.semilogy(steps, dec_train, "o-", color=COLORS["bidirectional"], label="training loss (fixed small set)")
    b.semilogy(steps, dec_held, "s-", color=COLORS["causal"], label="held-out loss")
    b.axhline(rate, color="black", ls="--", lw=1.5, label="entropy rate")
    b.set_xlabel("training steps")
    b.set_ylabel("nats per token (log scale)")
    b.set_title("small decoder, trained on one small batch")
    b.legend()
    fig.tight_layout()
    return fig


def plot_pll(joint: np.ndarray, pll: np.ndarray, n_points: int = 4000, seed: int = 0):
    """PLL against the true log-probability for a random subset of sequences (drawn from the source)."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    rng = np.random.default_rng(seed)
    flat_p, flat_pll = joint.ravel(), pll.ravel()
    idx = rng.choice(flat_p.size, size=min(n_points, flat_p.size), replace=False, p=flat_p)
    logp = np.log(flat_p[idx])
    fig, ax = plt.subplots(figsize=(5.5, 4.4))
    ax.scatter(
        logp,
        flat_pll[idx],
        s=6,
        alpha=0.35,
        color=COLORS["bidirectional"],
        label="pseudo-log-likelihood  $\\sum_i \\log p(x_i|x_{-i})$",
    )
    lo, hi = min(logp.min(), flat_pll[idx].min()), max(logp.max(), flat_pll[idx].max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="$y = x$ (a true log-likelihood)")
    ax.set_xlabel("true $\\log p(x_1..x_n)$ (nats)")
    ax.set_ylabel("score (nats)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_gibbs(sweeps, tv: dict[str, Sequence[float]], floors: dict[str, float] | None = None):
    """Total variation to the source after each Gibbs sweep (log scale), one curve per set of conditionals.

    tv: label -> TV after sweeps[0], sweeps[1], ...; floors: label -> TV of that chain's stationary
    distribution, drawn as a dotted line in the same colour.
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    colors = [COLORS["causal"], COLORS["bidirectional"], COLORS["prefix"], COLORS["encdec"]]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for (label, values), color in zip(tv.items(), colors):
        ax.semilogy(
            sweeps,
            np.maximum(np.asarray(values, dtype=np.float64), 1e-16),
            "o-",
            ms=3,
            color=color,
            label=label,
        )
        if floors and label in floors:
            ax.axhline(max(floors[label], 1e-16), color=color, ls=":", lw=1.5)
    ax.set_xlabel("Gibbs sweeps (each position resampled once per sweep)")
    ax.set_ylabel("total variation to the source p (log)")
    if floors:
        ax.plot([], [], ":", color="gray", label="stationary distribution of the chain")
    ax.set_ylim(1e-16, 1.5)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 0.12))  # above a floor drawn near 1e-15
    fig.tight_layout()
    return fig


def plot_context_curve(sizes, train, test, floor: float, rate: float, k: int, ylim=None):
    """Count model with context k: training and held-out loss against training tokens, with its floor."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.semilogx(sizes, train, "o-", color=COLORS["bidirectional"], label="training loss")
    ax.semilogx(sizes, test, "s-", color=COLORS["causal"], label="held-out loss")
    ax.axhline(rate, color="black", ls="--", lw=1.5, label=f"entropy rate H = {rate:.3f}")
    if floor > rate + 1e-9:
        ax.axhline(
            floor,
            color=COLORS["prefix"],
            ls=":",
            lw=2,
            label=f"floor of context {k}: H(X | {k} previous) = {floor:.3f}",
        )
    ax.set_xlabel("training tokens (log scale)")
    ax.set_ylabel("nats per token")
    ax.set_title(f"count model with context k = {k}")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(loc="lower right" if k >= 2 else "upper right")
    fig.tight_layout()
    return fig


@torch.no_grad()
def text_surprisal(model, ids: torch.Tensor) -> torch.Tensor:
    """-log q(token_t | tokens before it) in nats for t = 1..N-1 of one sequence. ids: (N,) or (1, N)."""
    check_instance("model", model, torch.nn.Module, "a torch.nn.Module")
    ids = check_tensor("ids", torch.as_tensor(ids), kind="int")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
        raise ValueError(f"ids must be one sequence of at least 2 tokens, got shape {tuple(ids.shape)}")
    was_training = model.training
    model.eval()
    try:
        logits = model(ids)
    finally:
        model.train(was_training)
    return token_losses(logits[0, :-1], ids[0, 1:])


def plot_surprisal(bits: np.ndarray, labels: Sequence[str] | None = None, window: int = 20):
    """Per-token surprisal (bits) along a text, with a running mean over `window` tokens."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    bits = np.asarray(bits, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    x = np.arange(1, len(bits) + 1)
    ax.bar(x, bits, width=1.0, color=COLORS["causal"], alpha=0.45, label="surprisal of each token")
    if len(bits) >= window:
        running = np.convolve(bits, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1 :], running, color="black", lw=2, label=f"mean of the last {window} tokens")
    ax.axhline(
        bits.mean(), color=COLORS["bidirectional"], ls="--", lw=1.5, label=f"mean {bits.mean():.2f} bits"
    )
    if labels is not None:
        top = np.argsort(bits)[-5:]
        for i in top:
            ax.annotate(
                repr(labels[i]).strip("'"),
                (x[i], bits[i]),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
    ax.set_xlabel("token position in the passage")
    ax.set_ylabel("bits")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
