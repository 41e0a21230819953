"""The chapter "Attention rank": the claims it tests."""

from __future__ import annotations

import numpy as np

from anatomy.claims import claim


def _one_matrix() -> dict:
    from anatomy.experiments import rank

    rows = rank.single_matrix_sweep(n=128, d=8, logit_stds=(1.0,), seeds=(0,))
    bi = next(r for r in rows if r["mask"] == "bidirectional")
    ca = next(r for r in rows if r["mask"] == "causal")
    return {
        "logits_rank": bi["logits_rank"],
        "bidirectional_numerical_rank": bi["numerical_rank"],
        "causal_numerical_rank": ca["numerical_rank"],
        "bidirectional_log10_sigma_min": bi["log10_sigma_min"],
        "causal_log10_sigma_min": ca["log10_sigma_min"],
        "causal_log10_det": ca["log10_det"],
    }


def _collapse() -> dict:
    from anatomy.experiments import rank

    curves = rank.collapse_curves(variants=("attention", "block"), depth=16, seeds=(0,))
    out = {}
    for (variant, mask), table in curves["residual"].items():
        out[f"{variant}_{mask}_depth16"] = float(np.exp(np.log(np.maximum(table[:, -1], 1e-300)).mean()))
    return out


claim(
    "attention_rank.softmax_low_rank",
    seeds=("003", "004"),
    claim="A bidirectional attention matrix is low rank, because softmax(QK^T) comes from an n x d matrix "
    "times a d x n matrix with n >> d, and low rank costs it expressive power.",
    verdict="contradicted",
    measure="QK^T has rank d, but softmax(QK^T) has full numerical rank n (float64) for random attention "
    "(n = 128, d = 8, logit std 0.5-4), and a majority of MiniLM's trained heads are numerically full rank, "
    "a larger share than of SmolLM2's causal heads",
    papers=("bhojanapalli2020low", "roy2007effective"),
    quick=_one_matrix,
)

claim(
    "attention_rank.causal_full_rank",
    seeds=("003", "004"),
    claim="A causal attention matrix is lower triangular with a positive diagonal, so its determinant is "
    "positive, it is full rank, and that makes decoder-only attention more expressive.",
    verdict="contradicted",
    measure="det > 0 holds exactly, but it does not set causal maps apart (bidirectional ones have full "
    "numerical rank too), causal maps are far worse conditioned than bidirectional ones "
    "(sigma_min below float64 resolution, condition number growing exponentially with n), products of "
    "full-rank causal maps still converge to rank one, and a larger share of SmolLM2's heads than of "
    "MiniLM's is numerically rank-deficient",
    papers=("viswanath1998condition", "xiao2024efficient"),
    quick=_one_matrix,
)

claim(
    "attention_rank.pure_attention_collapses",
    seeds=("003",),
    claim="The output of stacked self-attention converges (doubly) exponentially with depth to a rank-one "
    "matrix in which every token has the same representation (Dong et al. 2021).",
    verdict="supported with caveats",
    measure="pure attention stacks reach float64 rounding level (residual < 1e-10) for bidirectional and "
    "< 1e-5 for causal masks by depth 32; the caveat is the theorem's condition: with skip connections "
    "(full pre-LN blocks, 1/sqrt(L) scaling) the residual stays far from zero",
    papers=("dong2021attention", "noci2022signal"),
    quick=_collapse,
)

claim(
    "attention_rank.collapse_is_bidirectional",
    seeds=("003", "004"),
    claim="Rank collapse with depth is a problem of bidirectional attention, which the causal mask of a "
    "decoder avoids.",
    verdict="contradicted",
    measure="causal pure-attention stacks also collapse (slower), and in full blocks causal and "
    "bidirectional stacks end within a factor 2 of each other at depth 32; in real models neither SmolLM2 "
    "nor MiniLM collapses",
    papers=("wu2024role", "dong2021attention"),
    quick=_collapse,
)
