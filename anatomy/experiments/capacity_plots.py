"""The figures of the capacity and compression chapter: students' KLs, held-out contexts, the scaling
family's losses, Hoffmann et al.'s iso-FLOP lines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anatomy.experiments.capacity import PopulationFit
from anatomy.experiments.scaling_laws import (
    KAPLAN2020_ALPHA_N,
    chinchilla_loss,
    compute_optimal,
    fit_power_law,
    fit_power_law_floor,
    rule_of_thumb,
)

__all__ = ["plot_capacity", "plot_generalization", "plot_isoflop", "plot_scaling"]


def plot_capacity(
    fit: PopulationFit, names: Sequence[str], table_size: int, sources: Sequence[int] | None = None
):
    """Exact KL to the source against student parameters (log-log), one curve per source.

    names[i] labels source ``sources[i]`` of the fit (default: sources 0, 1, ...).
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    colors = [COLORS["bidirectional"], COLORS["causal"], COLORS["prefix"], COLORS["encdec"]]
    sources = range(len(names)) if sources is None else sources
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (source, name) in enumerate(zip(sources, names)):
        rows = [j for j, s in enumerate(fit.source) if s == source]
        ax.loglog(
            [fit.params[j] for j in rows],
            [max(fit.kl[j], 1e-5) for j in rows],
            "o-",
            color=colors[i % len(colors)],
            label=name,
        )
    ax.axvline(table_size, color="black", ls=":", lw=1.5, label=f"size of the table ({table_size:,} numbers)")
    ax.set_xlabel("student parameters (log scale)")
    ax.set_ylabel("KL to the source (nats per token, log)")
    ax.set_ylim(5e-6, 3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_generalization(
    fit: PopulationFit,
    names: Sequence[str],
    sources: Sequence[int] | None = None,
    baselines: Sequence[float] | None = None,
):
    """KL on the contexts trained on vs the held-out contexts, per student width, one panel per source.

    names[i] labels source ``sources[i]`` of the fit (default: sources 0, 1, ...). baselines[i], if given,
    is drawn as a dashed line: the KL of a predictor that ignores the context (H(X_t) - H of that source).
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    n = len(names)
    sources = range(n) if sources is None else sources
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), sharey=True, squeeze=False)
    for ax, source, name in zip(axes[0], sources, names):
        rows = [j for j, s in enumerate(fit.source) if s == source]
        x = np.arange(len(rows))
        ax.bar(
            x - 0.2,
            [max(fit.kl_seen[j], 1e-5) for j in rows],
            width=0.4,
            color=COLORS["prefix"],
            label="contexts trained on",
        )
        ax.bar(
            x + 0.2,
            [max(fit.kl_unseen[j], 1e-5) for j in rows],
            width=0.4,
            color=COLORS["bidirectional"],
            label="held-out contexts",
        )
        if baselines is not None:
            ax.axhline(
                baselines[list(sources).index(source)],
                color="#444444",
                ls="--",
                lw=1.2,
                label="ignoring the context",
            )
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 60)
        ax.set_xticks(x, [f"{fit.width[j]}\n({fit.params[j]:,})" for j in rows])
        ax.set_xlabel("student width (parameters)")
        ax.set_title(name)
    axes[0][0].set_ylabel("KL to the source (nats per token, log)")
    axes[0][0].legend(loc="upper left", ncol=3 if baselines is not None else 1, fontsize=8)
    fig.tight_layout()
    return fig


def plot_scaling(
    results: Sequence[dict],
    checkpoint: int = -1,
    reference_alpha: float = KAPLAN2020_ALPHA_N,
    ylim: tuple[float, float] | None = None,
):
    """Left: held-out loss against non-embedding parameters at one checkpoint, with the fitted power law.

    Right: every model's held-out loss against training tokens, the chosen checkpoint marked.
    """
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    n = np.array([r["params"] for r in results], dtype=np.float64)
    loss = np.array([r["val_loss"][checkpoint] for r in results])
    tokens = results[0]["tokens"][checkpoint]
    fit = fit_power_law(n, loss)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 50)
    a.loglog(n, loss, "o", ms=8, color=COLORS["causal"], label=f"held-out loss after {tokens:,} tokens")
    a.loglog(
        grid,
        fit(grid),
        "-",
        color=COLORS["causal"],
        alpha=0.6,
        label=f"fit $(N_c/N)^{{\\alpha}}$, $\\alpha$ = {fit.alpha:.3f}",
    )
    if len(n) >= 3:
        floor_fit = fit_power_law_floor(n, loss)
        a.loglog(
            grid,
            floor_fit(grid),
            "-.",
            color=COLORS["prefix"],
            label=f"fit $E + A N^{{-\\alpha}}$, E = {floor_fit.floor:.2f}, $\\alpha$ = {floor_fit.alpha:.2f}",
        )
    slope_ref = loss[0] * (grid / n[0]) ** (-reference_alpha)
    a.loglog(
        grid, slope_ref, "--", color="gray", label=f"slope of Kaplan et al., $\\alpha$ = {reference_alpha}"
    )
    a.set_xlabel("non-embedding parameters N (log scale)")
    a.set_ylabel("held-out loss (nats per character, log)")
    if ylim is not None:
        a.set_ylim(*ylim)
    from matplotlib.ticker import FormatStrFormatter

    a.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    a.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))
    a.legend(loc="upper right")
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(results):
        b.plot(
            r["tokens"],
            r["val_loss"],
            "o-",
            ms=4,
            color=cmap(i / max(1, len(results) - 1)),
            label=f"d = {r['d_model']}, N = {r['params']:,}",
        )
    b.axvline(tokens, color="gray", ls=":", lw=1.5)
    from matplotlib.ticker import FuncFormatter

    b.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
    b.set_xlabel("training tokens (characters)")
    b.set_ylabel("held-out loss (nats per character)")
    b.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    return fig


def plot_isoflop(budgets: Sequence[float], constants: dict | None = None, marks: dict | None = None):
    """Hoffmann et al.'s parametric loss along iso-FLOP lines (C = 6 N D), with each line's minimum.

    marks: optional name -> (N, D) models to place on the plot (e.g. Chinchilla, GPT-3).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, flops in enumerate(budgets):
        n_opt, d_opt = compute_optimal(flops, constants)
        grid = np.geomspace(n_opt / 30, n_opt * 30, 200)
        color = cmap(i / max(1, len(budgets) - 1))
        ax.semilogx(
            grid,
            chinchilla_loss(grid, flops / (6 * grid), constants),
            color=color,
            label=f"C = {flops:.1e} FLOPs",
        )
        ax.plot(n_opt, chinchilla_loss(n_opt, d_opt, constants), "o", color=color)
        n20, d20 = rule_of_thumb(flops)
        ax.plot(n20, chinchilla_loss(n20, d20, constants), "s", mfc="white", color=color)
    for name, (n, d) in (marks or {}).items():
        ax.plot(n, chinchilla_loss(n, d, constants), "*", ms=13, color="black")
        ax.annotate(name, (n, chinchilla_loss(n, d, constants)), textcoords="offset points", xytext=(6, 4))
    ax.plot([], [], "o", color="gray", label="minimum of the fit")
    ax.plot([], [], "s", mfc="white", color="gray", label="20 tokens per parameter")
    ax.set_xlabel("parameters N (log scale)")
    ax.set_ylabel("predicted loss (nats per token)")
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    return fig
