"""The attention rank chapter's figures and tables: single matrices, products, the collapse with depth,
real models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from anatomy._checks import check_int
from anatomy.experiments.rank import _MASKS, VARIANT_LABELS, VARIANTS, _eps

__all__ = [
    "collapse_at",
    "inspection_summary",
    "plot_collapse",
    "plot_gram",
    "plot_heads",
    "plot_product",
    "plot_real_models",
    "plot_single_matrix",
    "sweep_summary",
    "sweep_table",
]


# ------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _colors() -> dict[str, str]:
    from anatomy.book import COLORS

    return COLORS


def plot_single_matrix(rows: list[dict], cond: dict[str, np.ndarray]):
    """Four panels against the logit scale (medians over seeds, causal vs bidirectional): numerical rank at
    float64 and float32 precision, effective rank, log10 sigma_min (with float64's resolution marked); and
    log10 condition number against n for random triangular, causal and bidirectional matrices."""
    plt, colors = _pyplot(), _colors()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2))
    (ax_rank, ax_erank), (ax_smin, ax_cond) = axes
    stds = sorted({r["logit_std"] for r in rows})
    n = rows[0]["n"]

    def med(mask, key):
        return [np.median([r[key] for r in rows if r["mask"] == mask and r["logit_std"] == s]) for s in stds]

    for mask in _MASKS:
        ax_rank.plot(stds, med(mask, "numerical_rank"), "o-", color=colors[mask], label=f"{mask}, float64")
        ax_rank.plot(
            stds, med(mask, "rank_float32"), "s--", color=colors[mask], alpha=0.7, label=f"{mask}, float32"
        )
        ax_erank.plot(stds, med(mask, "effective_rank"), "o-", color=colors[mask], label=mask)
        ax_smin.plot(stds, med(mask, "log10_sigma_min"), "o-", color=colors[mask], label=mask)
    ax_rank.axhline(n, color="gray", ls=":", lw=1)
    ax_rank.set(ylabel=f"numerical rank (of n = {n})", title="numerical rank of softmax(QK$^T$)")
    ax_rank.legend(fontsize=8)
    ax_erank.axhline(n, color="gray", ls=":", lw=1)
    ax_erank.text(stds[0], n * 0.96, f"n = {n} (full rank)", color="gray", fontsize=9, va="top")
    ax_erank.set(ylabel="effective rank", title="effective rank", ylim=(0, n * 1.05))
    ax_erank.legend()
    floor = math.log10(n * _eps(torch.float64))
    ax_smin.axhline(floor, color="gray", ls=":", lw=1)
    ax_smin.text(stds[-1], floor - 3, "float64 resolution", color="gray", fontsize=9, ha="right", va="top")
    ax_smin.set(ylabel=r"log$_{10}\,\sigma_{\min}$", title="smallest singular value")
    for ax in (ax_rank, ax_erank, ax_smin):
        ax.set(xscale="log", xlabel="logit standard deviation")
        ax.set_xticks(stds, [f"{s:g}" for s in stds])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ns = cond["n"]
    for kind, color, label in (
        ("gaussian", "black", "random triangular, N(0,1)"),
        ("causal", colors["causal"], "causal attention"),
        ("bidirectional", colors["bidirectional"], "bidirectional attention"),
    ):
        ax_cond.plot(ns, np.median(cond[kind], axis=1), "o-", color=color, label=label)
    ax_cond.plot(ns, ns * math.log10(2.0), ls="--", color="gray", lw=1, label=r"$2^n$")
    ax_cond.set(
        xlabel="n (tokens)", ylabel=r"log$_{10}$ condition number", title="conditioning against length"
    )
    ax_cond.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_product(prod: dict[str, dict[str, np.ndarray]]):
    """P_l = A_l ... A_1: sigma_2/sigma_1 and the residual to rank one (left), log10 det (right)."""
    plt, colors = _pyplot(), _colors()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for mask, res in prod.items():
        axes[0].semilogy(res["depth"], res["residual"], "-", color=colors[mask], label=f"{mask}: residual")
        axes[0].semilogy(
            res["depth"], res["sigma_ratio"], "--", color=colors[mask], label=rf"{mask}: $\sigma_2/\sigma_1$"
        )
        axes[1].plot(res["depth"], res["log10_det"], "-", color=colors[mask], label=mask)
    axes[0].axhline(1e-16, color="gray", ls=":", lw=1)
    axes[0].set(
        xlabel="number of attention matrices multiplied, l",
        ylabel="distance to rank one",
        title=r"$P_l = A_l \cdots A_1$ becomes rank one",
    )
    axes[0].legend(fontsize=8)
    axes[1].set(
        xlabel="number of attention matrices multiplied, l",
        ylabel=r"log$_{10}$ det $P_l$",
        title="yet every factor is invertible",
    )
    axes[1].legend()
    fig.tight_layout()
    return fig


def plot_collapse(curves: dict, variants: Sequence[str] = VARIANTS, upto: int | None = None, ax=None):
    """Relative residual against depth, one colour per variant, solid causal and dashed bidirectional;
    lines are geometric means over seeds, bands span the seeds."""
    plt = _pyplot()
    depth = curves["depth"]
    upto = depth[-1] if upto is None else upto
    keep = depth <= upto
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4.6))
    palette = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#A6761D"]
    floor = 1e-17
    for i, variant in enumerate(variants):
        for mask, ls in (("causal", "-"), ("bidirectional", "--")):
            table = np.maximum(curves["residual"][(variant, mask)][:, keep], floor)
            mean = 10 ** np.log10(table).mean(0)
            ax.semilogy(
                depth[keep],
                mean,
                ls,
                color=palette[i % len(palette)],
                label=VARIANT_LABELS[variant] if mask == "causal" else None,
            )
            ax.fill_between(
                depth[keep], table.min(0), table.max(0), color=palette[i % len(palette)], alpha=0.08, lw=0
            )
    ax.plot([], [], "-", color="gray", label="causal (solid)")
    ax.plot([], [], "--", color="gray", label="bidirectional (dashed)")
    ax.set(
        xlabel="depth (layers)",
        ylabel=r"$\|X - \mathbf{1}\bar{x}^T\|_F \,/\, \|X\|_F$",
        ylim=(floor, 3),
        title="token representations: distance to rank one",
    )
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.07), ncol=2)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def plot_gram(states: dict, variant: str, depth_index: int, depth_label: int, residuals: dict | None = None):
    """How far apart the tokens' directions are at one depth, causal and bidirectional: log10(1 - cos) for
    every pair of tokens (dark: identical directions, down to float64 rounding; light: unrelated)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4))
    for ax, mask in zip(axes, _MASKS):
        X = states[(variant, mask)][depth_index]
        Xc = X / X.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        gap = np.log10(np.clip((1.0 - Xc @ Xc.T).numpy(), 1e-16, None))
        im = ax.imshow(gap, vmin=-16, vmax=0.3, cmap="viridis", interpolation="nearest")
        title = f"{mask}"
        if residuals is not None:
            title += f": residual {residuals[(variant, mask)]:.1e}"
        ax.set(title=title, xlabel="token")
        ax.grid(False)
    axes[0].set_ylabel("token")
    fig.colorbar(im, ax=axes, shrink=0.8, label=r"log$_{10}$(1 $-$ cosine similarity)")
    fig.suptitle(f"{VARIANT_LABELS[variant]}, depth {depth_label}")
    return fig


def plot_heads(
    maps: torch.Tensor, layer: int, title: str, stats: dict[str, np.ndarray] | None = None, ncols: int = 6
):
    """Every head of one layer as a heatmap (query rows, key columns), with its effective rank."""
    plt = _pyplot()
    H = maps.shape[1]
    nrows = math.ceil(H / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.7 * ncols, 2.05 * nrows + 0.5), squeeze=False)
    fig.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.42 / (2.05 * nrows + 0.5), wspace=0.08, hspace=0.32
    )
    for h, ax in enumerate(axes.flat):
        ax.grid(False)
        ax.set_xticks([])
        ax.set_yticks([])
        if h >= H:
            ax.axis("off")
            continue
        A = maps[layer, h].float().numpy()
        ax.imshow(A**0.5, cmap="magma", vmin=0, vmax=1, interpolation="nearest")  # sqrt: small weights show
        label = f"head {h}"
        if stats is not None:
            label += f"\nerank {stats['effective_rank'][layer, h]:.1f}, sink {stats['sink'][layer, h]:.2f}"
        ax.set_title(label, fontsize=8)
    fig.suptitle(f"{title}, layer {layer} (colour: sqrt of the attention weight)", fontsize=10)
    return fig


def sweep_table(rows: list[dict]) -> str:
    """An HTML table of :func:`single_matrix_sweep` rows: medians over seeds per (mask, logit_std)."""
    if not rows:
        raise ValueError("rows must not be empty")
    head = (
        "mask",
        "logit std",
        "rank of QK\u1d40",
        "numerical rank (float64)",
        "numerical rank (float32)",
        "effective rank",
        "log\u2081\u2080 \u03c3_min",
        "log\u2081\u2080 det",
    )
    pad = ' style="padding:0.15em 0.7em"'
    header = "<thead><tr>" + "".join(f"<th{pad}>{h}</th>" for h in head) + "</tr></thead>"
    lines = ["<table>", header, "<tbody>"]
    for mask in _MASKS:
        for std in sorted({r["logit_std"] for r in rows}):
            group = [r for r in rows if r["mask"] == mask and r["logit_std"] == std]
            if not group:
                continue

            def med(key, group=group):
                return float(np.median([r[key] for r in group]))

            cells = (
                mask,
                f"{std:g}",
                f"{med('logits_rank'):.0f}",
                f"{med('numerical_rank'):.0f} of {group[0]['n']}",
                f"{med('rank_float32'):.0f}",
                f"{med('effective_rank'):.1f}",
                f"{med('log10_sigma_min'):.1f}",
                f"{med('log10_det'):.0f}",
            )
            lines.append("<tr>" + "".join(f"<td{pad}>{c}</td>" for c in cells) + "</tr>")
    return "\n".join([*lines, "</tbody>", "</table>"])


def sweep_summary(rows: list[dict], cond: dict[str, np.ndarray]) -> dict[str, float]:
    """The numbers the chapter quotes from :func:`single_matrix_sweep` and :func:`triangular_condition`.

    Ranks are minima over all draws and scales, effective ranks medians at the smallest ("lo") and largest
    ("hi") logit scale, log10 sigma_min medians over all scales (and the worst causal one), log10 det the
    causal range, condition numbers medians at the largest n. Also floor64 (log10 of n * eps64) and
    causal_det_positive (every causal determinant positive and finite in log10).
    """
    if not rows:
        raise ValueError("rows must not be empty")

    def pick(mask, key, std=None):
        keep = [r for r in rows if r["mask"] == mask and (std is None or r["logit_std"] == std)]
        return np.array([r[key] for r in keep])

    lo, hi = min(r["logit_std"] for r in rows), max(r["logit_std"] for r in rows)
    n = rows[0]["n"]
    return {
        "logits_rank_max": int(max(pick(m, "logits_rank").max() for m in _MASKS)),
        "bi_rank_min": int(pick("bidirectional", "numerical_rank").min()),
        "bi_rank32_min": int(pick("bidirectional", "rank_float32").min()),
        "causal_rank_min": int(pick("causal", "numerical_rank").min()),
        "causal_rank32_min": int(pick("causal", "rank_float32").min()),
        "bi_erank_lo": float(np.median(pick("bidirectional", "effective_rank", lo))),
        "causal_erank_lo": float(np.median(pick("causal", "effective_rank", lo))),
        "bi_erank_hi": float(np.median(pick("bidirectional", "effective_rank", hi))),
        "causal_erank_hi": float(np.median(pick("causal", "effective_rank", hi))),
        "bi_smin_med": float(np.median(pick("bidirectional", "log10_sigma_min"))),
        "causal_smin_med": float(np.median(pick("causal", "log10_sigma_min"))),
        "causal_smin_worst": float(pick("causal", "log10_sigma_min").min()),
        "causal_logdet_max": float(pick("causal", "log10_det").max()),
        "causal_logdet_min": float(pick("causal", "log10_det").min()),
        "causal_det_positive": bool(np.isfinite(pick("causal", "log10_det")).all()),
        "floor64": math.log10(n * _eps(torch.float64)),
        "cond_n": int(cond["n"][-1]),
        "cond_gauss_nmax": float(np.median(cond["gaussian"][-1])),
        "cond_causal_nmax": float(np.median(cond["causal"][-1])),
        "cond_bi_nmax": float(np.median(cond["bidirectional"][-1])),
        "two_to_nmax": float(cond["n"][-1] * math.log10(2.0)),
    }


def collapse_at(curves: dict, variant: str, mask: str, depth: int) -> float:
    """Geometric mean over the random draws of :func:`collapse_curves`' residual at one depth."""
    if (variant, mask) not in curves["residual"]:
        raise ValueError(
            f"variant and mask must be a pair these curves hold, got ({variant!r}, {mask!r}); "
            f"they hold {sorted(curves['residual'])}"
        )
    check_int("depth", depth, lo=0, hi=curves["residual"][(variant, mask)].shape[1] - 1)
    table = np.maximum(curves["residual"][(variant, mask)][:, depth], 1e-300)
    return float(np.exp(np.log(table).mean()))


def inspection_summary(insp: dict) -> dict[str, float]:
    """The numbers the chapter quotes from one :func:`inspect_model` result.

    N, heads, rank_deficient (heads with numerical rank < N), full_rank_share (the fraction of heads with
    numerical rank N), rank_min / rank_med, erank_med, smin_med
    (median log10 sigma_min), sink (mean attention on token 0), res_min_skip (smallest residual to rank one
    over the layers, without token 0), res_med_all_mid / res_med_skip_mid (medians over the layers between
    the embeddings and the last, with and without token 0), norm_ratio (largest ratio of token 0's norm to
    the others' mean norm).
    """
    st, N = insp["heads"], insp["maps"].shape[-1]
    return {
        "N": int(N),
        "heads": int(st["numerical_rank"].size),
        "rank_deficient": int((st["numerical_rank"] < N).sum()),
        "full_rank_share": float((st["numerical_rank"] == N).mean()),
        "rank_min": int(st["numerical_rank"].min()),
        "rank_med": int(np.median(st["numerical_rank"])),
        "erank_med": float(np.median(st["effective_rank"])),
        "smin_med": float(np.median(np.log10(np.maximum(st["sigma_min"], 1e-300)))),
        "sink": float(st["sink"].mean()),
        "res_min_skip": float(insp["residual_skip_first"][1:].min()),
        "res_med_all_mid": float(np.median(insp["residual"][1:-1])),
        "res_med_skip_mid": float(np.median(insp["residual_skip_first"][1:-1])),
        "norm_ratio": float(insp["norm_ratio"].max()),
    }


def plot_real_models(inspections: dict[str, dict], masks: dict[str, str]):
    """Real models, four panels: per-head effective rank and log10 sigma_min (one dot per head), attention
    to the first token per layer, and the residual to rank one per layer with and without the first token.

    inspections: model name -> :func:`inspect_model` result; masks: model name -> "causal" | "bidirectional".
    """
    plt, colors = _pyplot(), _colors()
    fig, grid = plt.subplots(2, 2, figsize=(10, 7.4))
    axes = grid.ravel()
    rng = np.random.default_rng(0)  # horizontal jitter only
    names = list(inspections)
    n_tokens = {name: inspections[name]["maps"].shape[-1] for name in names}
    for i, name in enumerate(names):
        st, color = inspections[name]["heads"], colors[masks[name]]
        er = st["effective_rank"].ravel()
        axes[0].scatter(
            i + 0.25 * rng.standard_normal(er.size).clip(-1.2, 1.2), er, s=6, alpha=0.45, color=color
        )
        axes[0].hlines(n_tokens[name], i - 0.35, i + 0.35, color=color, ls=":", lw=1.5)
        sm = np.log10(np.maximum(st["sigma_min"].ravel(), 1e-300))
        axes[1].scatter(
            i + 0.25 * rng.standard_normal(sm.size).clip(-1.2, 1.2), sm, s=6, alpha=0.45, color=color
        )
        layers = np.arange(st["sink"].shape[0])
        depth = layers / max(1, layers[-1])
        axes[2].plot(depth, st["sink"].mean(1), "o-", color=color, ms=3, label=name)
        res = inspections[name]
        d = np.arange(len(res["residual"])) / max(1, len(res["residual"]) - 1)
        axes[3].plot(d, res["residual"], "-", color=color, label=f"{name}, all tokens")
        axes[3].plot(d, res["residual_skip_first"], "--", color=color, label=f"{name}, without token 0")
    floor = math.log10(max(n_tokens.values()) * _eps(torch.float32))
    axes[1].axhline(floor, color="gray", ls=":", lw=1)
    axes[1].text(
        len(names) - 0.45, floor - 2, "float32 resolution", color="gray", fontsize=8, ha="right", va="top"
    )
    for ax in axes[:2]:
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
    axes[0].set(ylabel="effective rank (dotted: N, full rank)", title="effective rank, one dot per head")
    axes[1].set(ylabel=r"log$_{10}\,\sigma_{\min}$ of the attention map", title="smallest singular value")
    axes[2].set(
        xlabel="relative depth (layer / last layer)",
        ylabel="mean attention on token 0",
        title="the attention sink",
        ylim=(0, 1),
    )
    axes[3].set(
        xlabel="relative depth (0 = embeddings)",
        ylabel=r"$\|X-\mathbf{1}\bar x^T\|_F/\|X\|_F$",
        title="hidden states: distance to rank one",
        ylim=(0, 1.05),
    )
    axes[2].legend(fontsize=8)
    axes[3].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
