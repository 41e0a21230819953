"""Tests for anatomy.experiments.rank (and rank_plots):
rank measures, the accurate sigma_min of triangular matrices, products of attention
matrices, collapse stacks built from anatomy.model, and the real-model helpers (on a small random model)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from anatomy import Config, Transformer
from anatomy.experiments import rank, rank_plots

matplotlib.use("Agg")


def _matrix_with_singular_values(s, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(s)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return U @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V.T


# ------------------------------------------------------------------------------------ rank measures


def test_numerical_rank_counts_singular_values_above_tolerance():
    A = _matrix_with_singular_values([1.0, 0.5, 1e-3, 1e-9, 1e-20])
    assert int(rank.numerical_rank(A)) == 4  # 1e-20 is below 5 * eps64
    assert int(rank.numerical_rank(A, rtol=1e-6)) == 3
    assert int(rank.numerical_rank(A.float())) == 3  # float32 cannot resolve 1e-9


def test_numerical_rank_is_batched():
    A = torch.stack([torch.eye(4, dtype=torch.float64), torch.ones(4, 4, dtype=torch.float64)])
    assert rank.numerical_rank(A).tolist() == [4, 1]


def test_effective_rank_extremes_and_formula():
    assert float(rank.effective_rank(torch.eye(7, dtype=torch.float64))) == pytest.approx(7.0)
    assert float(rank.effective_rank(torch.ones(5, 5, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-6)
    s = np.array([3.0, 2.0, 1.0])
    p = s / s.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert float(rank.effective_rank(_matrix_with_singular_values(list(s)))) == pytest.approx(expected)


def test_effective_rank_rejects_zero_matrix():
    with pytest.raises(ValueError, match="all-zero"):
        rank.effective_rank(torch.zeros(3, 3))


def test_triangular_sigma_min_matches_high_precision():
    """The substitution-based sigma_min of a causal attention matrix agrees with 50-digit arithmetic, where
    the SVD is off by many orders of magnitude."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    A, _ = rank.random_attention(32, 8, 4.0, "causal", torch.Generator().manual_seed(3))
    ours = float(rank.smallest_singular_value(A))
    M = mpmath.matrix(A.tolist()) ** -1
    x = mpmath.matrix([1] * 32)
    for _ in range(300):  # power iteration on (A^-1)^T A^-1
        y = M.T * (M * x)
        norm = mpmath.norm(y)
        x = y / norm
    exact = float(1 / mpmath.sqrt(norm))
    assert exact < 1e-20  # far below what an SVD can resolve
    assert ours == pytest.approx(exact, rel=1e-6)
    svd = float(torch.linalg.svdvals(A)[-1])
    assert abs(math.log10(svd) - math.log10(exact)) > 3


def test_sigma_min_general_matrix_uses_svd():
    A = _matrix_with_singular_values([2.0, 1.0, 0.25])
    assert float(rank.smallest_singular_value(A)) == pytest.approx(0.25)


def test_sigma_min_underflow_gives_zero():
    A = torch.eye(400, dtype=torch.float64) * 1e-3 + torch.tril(torch.ones(400, 400, dtype=torch.float64), -1)
    assert float(rank.smallest_singular_value(A)) == 0.0  # ||A^-1|| overflows float64


def test_log10_det_triangular_is_sum_of_diagonal():
    A = torch.tril(torch.rand(6, 6, dtype=torch.float64)) + torch.eye(6, dtype=torch.float64)
    expected = float(torch.log10(torch.diagonal(A)).sum())
    assert float(rank.log10_det(A)) == pytest.approx(expected)
    assert float(rank.log10_det(A)) == pytest.approx(float(torch.linalg.slogdet(A)[1]) / math.log(10))
    B = _matrix_with_singular_values([10.0, 1.0, 0.1])
    assert float(rank.log10_det(B)) == pytest.approx(0.0, abs=1e-12)


def test_matrix_stats_keys_and_values():
    stats = rank.matrix_stats(torch.eye(4, dtype=torch.float64) * 2)
    assert stats["numerical_rank"] == 4 and stats["rank_float32"] == 4
    assert stats["sigma_min"] == pytest.approx(2.0) and stats["log10_cond"] == pytest.approx(0.0)
    assert stats["log10_det"] == pytest.approx(4 * math.log10(2))
    with pytest.raises(ValueError, match="one matrix"):
        rank.matrix_stats(torch.eye(3).expand(2, 3, 3))


@pytest.mark.parametrize(
    "bad, err",
    [
        ([1, 2], TypeError),
        (torch.zeros(3), ValueError),
        (torch.zeros(3, 3, dtype=torch.long), TypeError),
        (torch.full((2, 2), float("nan")), ValueError),
    ],
)
def test_rank_functions_validate_input(bad, err):
    with pytest.raises(err):
        rank.numerical_rank(bad)


def test_numerical_rank_validates_rtol():
    with pytest.raises(ValueError, match="rtol"):
        rank.numerical_rank(torch.eye(2), rtol=-1.0)


# ------------------------------------------------------------------------------ random attention


@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_random_attention_is_masked_softmax_of_the_logits(mask):
    A, logits = rank.random_attention(24, 4, 2.0, mask, torch.Generator().manual_seed(0))
    assert int(rank.numerical_rank(logits)) == 4  # Q K^T has rank d
    if mask == "causal":
        logits = logits.masked_fill(torch.ones(24, 24, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(A, torch.softmax(logits, -1), atol=1e-12, rtol=1e-10)
    assert int(rank.numerical_rank(A)) == 24  # the softmax is full rank


def test_random_attention_validates_arguments():
    with pytest.raises(ValueError, match="mask"):
        rank.random_attention(8, 2, 1.0, "prefix")
    with pytest.raises(ValueError, match="logit_std"):
        rank.random_attention(8, 2, 0.0)
    with pytest.raises(TypeError, match="n must be an int"):
        rank.random_attention(8.0, 2, 1.0)


def test_single_matrix_sweep_and_table():
    rows = rank.single_matrix_sweep(n=32, d=4, logit_stds=(1.0, 4.0), seeds=(0, 1))
    assert len(rows) == 2 * 2 * 2
    for r in rows:
        assert r["logits_rank"] <= 4
        assert math.isfinite(r["log10_det"])  # every attention matrix is invertible in exact arithmetic
    causal = np.median([r["log10_sigma_min"] for r in rows if r["mask"] == "causal"])
    bidirectional = np.median([r["log10_sigma_min"] for r in rows if r["mask"] == "bidirectional"])
    assert causal < bidirectional  # causal maps are the worse-conditioned ones
    table = rank_plots.sweep_table(rows)
    assert table.count(">causal</td>") == 2 and table.count(">bidirectional</td>") == 2
    cond = rank.triangular_condition(ns=(8, 16), seeds=(0,))
    summary = rank_plots.sweep_summary(rows, cond)
    assert summary["logits_rank_max"] == 4 and summary["causal_det_positive"]
    assert summary["causal_smin_med"] < summary["bi_smin_med"]
    assert summary["cond_n"] == 16


def test_triangular_condition_grows_exponentially():
    cond = rank.triangular_condition(ns=(8, 32, 64), seeds=(0, 1, 2))
    med = np.median(cond["gaussian"], axis=1)
    assert med[-1] > med[0] + 10  # about 2^n: log10 grows by ~0.3 per row
    assert np.median(cond["bidirectional"], axis=1)[-1] < np.median(cond["causal"], axis=1)[-1]


# ------------------------------------------------------------------------------- depth and products


def test_residual_to_rank_one():
    X = torch.ones(5, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert float(rank.residual_to_rank_one(X)) == 0.0
    Y = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert float(rank.residual_to_rank_one(Y)) == pytest.approx(1.0)
    assert float(rank.residual_to_rank_one(3 * Y)) == pytest.approx(1.0)  # scale-invariant
    Z = torch.cat([torch.full((1, 2), 100.0, dtype=torch.float64), X[:, :2]])
    assert float(rank.residual_to_rank_one(Z, skip=1)) == 0.0
    with pytest.raises(ValueError, match="skip"):
        rank.residual_to_rank_one(X, skip=5)
    with pytest.raises(ValueError, match="all zeros"):
        rank.residual_to_rank_one(torch.zeros(3, 2))


def test_causal_product_stays_invertible_and_converges_to_rank_one():
    res = rank.attention_product(n=16, d=4, depth=40, mask="causal", seed=0)
    assert res["residual"][-1] < 1e-8 < res["residual"][0]
    assert np.all(np.isfinite(res["log10_det"])) and np.all(np.diff(res["log10_det"]) < 0)
    assert res["layer_rank"].min() >= 15


@pytest.mark.parametrize("variant", rank.VARIANTS)
def test_collapse_stack_variants_run(variant):
    layers = rank.collapse_stack(variant, "causal", depth=3, d_model=16, n_heads=2, seed=0)
    X = torch.randn(1, 10, 16, dtype=torch.float64)
    states = rank.collapse_states(layers, X)
    assert len(states) == 4 and all(s.shape == (1, 10, 16) and s.dtype == torch.float64 for s in states)


def test_scaled_block_differs_from_block_only_by_the_branch_scale():
    a = rank.collapse_stack("block", "causal", depth=4, d_model=16, n_heads=2, seed=1)
    b = rank.collapse_stack("block/sqrt(L)", "causal", depth=4, d_model=16, n_heads=2, seed=1)
    for la, lb in zip(a, b):
        torch.testing.assert_close(lb.block.self_attn.o_proj.weight, la.block.self_attn.o_proj.weight / 2)
        torch.testing.assert_close(lb.block.mlp.down_proj.weight, la.block.mlp.down_proj.weight / 2)
        torch.testing.assert_close(lb.block.self_attn.q_proj.weight, la.block.self_attn.q_proj.weight)


def test_causal_first_token_is_untouched_by_later_tokens():
    layers = rank.collapse_stack("attention", "causal", depth=2, d_model=8, n_heads=2, seed=0)
    X = torch.randn(1, 6, 8, dtype=torch.float64)
    Y = X.clone()
    Y[0, 3:] += 1.0
    before, after = rank.collapse_states(layers, X)[-1], rank.collapse_states(layers, Y)[-1]
    torch.testing.assert_close(before[0, :3], after[0, :3])


def test_pure_attention_collapses_and_full_block_does_not():
    curves = rank.collapse_curves(
        variants=("attention", "block"),
        depth=12,
        n=16,
        d_model=16,
        n_heads=2,
        seeds=(0, 1),
        keep_states=(0, 12),
    )
    assert curves["residual"][("attention", "bidirectional")][:, -1].max() < 1e-10
    causal = curves["residual"][("attention", "causal")]
    assert causal[:, -1].max() < 1e-2 * causal[:, 0].min()
    assert curves["residual"][("block", "causal")][:, -1].min() > 0.1
    assert curves["residual"][("block", "bidirectional")][:, -1].min() > 0.1
    assert len(curves["states"][("attention", "causal")]) == 2
    geo = rank_plots.collapse_at(curves, "block", "causal", 12)
    table = curves["residual"][("block", "causal")][:, 12]
    assert table.min() <= geo <= table.max()


def test_collapse_validates_arguments():
    with pytest.raises(ValueError, match="variant"):
        rank.collapse_stack("mlp only", "causal", 2)
    with pytest.raises(ValueError, match="divisible"):
        rank.collapse_stack("attention", "causal", 2, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="keep_states"):
        rank.collapse_curves(variants=("attention",), depth=2, keep_states=(5,))


# ------------------------------------------------------------------------------------- real models


def test_head_stats_on_known_maps():
    N = 5
    sink = torch.zeros(N, N)
    sink[:, 0] = 1.0  # every query attends to token 0
    eye = torch.eye(N)
    maps = torch.stack([sink, eye])[None]  # (1 layer, 2 heads, N, N)
    st = rank.head_stats(maps)
    assert st["numerical_rank"].tolist() == [[1, N]]
    assert st["sink"][0].tolist() == pytest.approx([1.0, 0.0])
    assert st["effective_rank"][0, 1] == pytest.approx(N)
    with pytest.raises(ValueError, match="layers, heads"):
        rank.head_stats(eye)


def test_inspect_model_on_a_small_transformer():
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=50, d_model=32, n_layers=3, n_heads=4, mask="causal"))
    ids = torch.randint(0, 50, (1, 12))
    out = rank.inspect_model(model, ids)
    summary = rank_plots.inspection_summary(out)
    assert summary["N"] == 12 and summary["heads"] == 12
    # the summary's numbers, recomputed here from the maps themselves
    maps = out["maps"].double()
    assert summary["sink"] == pytest.approx(maps[..., 1:, 0].mean().item(), rel=1e-5)
    ranks = torch.linalg.matrix_rank(maps.reshape(12, 12, 12), rtol=12 * torch.finfo(torch.float32).eps)
    assert summary["rank_deficient"] == int((ranks < 12).sum())
    assert summary["full_rank_share"] == pytest.approx((ranks == 12).double().mean().item())
    assert out["maps"].shape == (3, 4, 12, 12)
    assert torch.allclose(out["maps"].sum(-1), torch.ones(3, 4, 12), atol=1e-5)
    assert bool((out["maps"].triu(1) == 0).all())
    assert out["residual"].shape == (4,) and out["residual_skip_first"].shape == (4,)
    assert out["heads"]["sink"].shape == (3, 4)
    with pytest.raises(ValueError, match="one sequence"):
        rank.attention_maps(model, torch.randint(0, 50, (2, 12)))
    with pytest.raises(TypeError, match="anatomy Transformer"):
        rank.attention_maps(torch.nn.Linear(2, 2), ids)


def test_plots_return_figures():
    import matplotlib.pyplot as plt

    rows = rank.single_matrix_sweep(n=16, d=4, logit_stds=(1.0, 2.0), seeds=(0,))
    cond = rank.triangular_condition(ns=(4, 8), seeds=(0,))
    prod = {m: rank.attention_product(n=8, d=4, depth=5, mask=m) for m in ("causal", "bidirectional")}
    curves = rank.collapse_curves(
        variants=("attention",), depth=3, n=8, d_model=8, n_heads=2, seeds=(0,), keep_states=(0, 3)
    )
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=20, d_model=16, n_layers=2, n_heads=2, mask="causal"))
    insp = rank.inspect_model(model, torch.randint(0, 20, (1, 6)))
    figs = [
        rank_plots.plot_single_matrix(rows, cond),
        rank_plots.plot_product(prod),
        rank_plots.plot_collapse(curves, variants=("attention",)),
        rank_plots.plot_gram(curves["states"], "attention", 1, 3),
        rank_plots.plot_heads(insp["maps"], 1, "test", insp["heads"], ncols=2),
        rank_plots.plot_real_models({"tiny": insp}, {"tiny": "causal"}),
    ]
    for fig in figs:
        assert isinstance(fig, matplotlib.figure.Figure)
        plt.close(fig)
