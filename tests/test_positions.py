"""Tests for anatomy.experiments.positions:
permutation equivariance, position probes, the exact masked-LM posterior of a
Markov source, the order experiment and the context-shuffle test."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from anatomy import Config, Transformer
from anatomy.data import MarkovSource
from anatomy.experiments import positions

matplotlib.use("Agg")


def _model(mask, pos="none", seed=0, **kw):
    torch.manual_seed(seed)
    config = dict(
        vocab_size=32,
        d_model=32,
        n_layers=2,
        n_heads=4,
        mask=mask,
        pos=pos,
        norm="layer",
        mlp="gelu",
        max_seq_len=64,
    )
    config.update(kw)
    return Transformer(Config(**config)).eval()


# ---------------------------------------------------------------------------------- permutations


def test_bidirectional_nope_is_permutation_equivariant_and_causal_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 32, (3, 20), generator=g)
    perm = torch.randperm(20, generator=g)
    bi = positions.permutation_gap(_model("bidirectional"), x, perm)
    ca = positions.permutation_gap(_model("causal"), x, perm)
    assert bi["layer"] == [0, 1, 2]
    assert max(bi["relative"]) < 1e-5
    assert ca["relative"][0] == 0.0  # the embeddings themselves are permuted exactly
    assert max(ca["relative"]) > 1e-2


def test_positions_break_equivariance_even_when_bidirectional():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 32, (2, 16), generator=g)
    perm = torch.randperm(16, generator=g)
    gap = positions.permutation_gap(_model("bidirectional", pos="learned", init_std=0.5), x, perm)
    assert max(gap["relative"]) > 1e-2


def test_identity_permutation_gives_zero_gap():
    x = torch.randint(0, 32, (2, 10))
    gap = positions.permutation_gap(_model("causal"), x, torch.arange(10))
    assert max(gap["max_abs"]) == 0.0


@pytest.mark.parametrize("perm", [torch.tensor([0, 1, 1]), torch.arange(4), torch.tensor([0.0, 2.0, 1.0])])
def test_permutation_gap_validates_perm(perm):
    with pytest.raises(ValueError, match="perm"):
        positions.permutation_gap(_model("causal"), torch.randint(0, 32, (1, 3)), perm)


def test_permutation_gap_validates_model_and_ids():
    with pytest.raises(TypeError, match="anatomy Transformer"):
        positions.permutation_gap(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long), torch.arange(3))
    with pytest.raises(ValueError, match="LongTensor"):
        positions.permutation_gap(_model("causal"), torch.zeros(1, 3), torch.arange(3))


# ------------------------------------------------------------------------------------------ probes


def test_ridge_r2_on_exact_and_on_useless_features():
    g = torch.Generator().manual_seed(0)
    S, N = 40, 12
    pos = torch.arange(1, N + 1, dtype=torch.float64)
    exact = torch.stack([pos * 2 + 1, torch.randn(N, generator=g, dtype=torch.float64)], -1).expand(S, N, 2)
    assert positions.ridge_r2(exact, pos, n_train=20, ridge=0.0)["r2"] == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(S, N, 3, generator=g, dtype=torch.float64)
    result = positions.ridge_r2(noise, pos, n_train=20)
    assert result["r2"] < 0.1
    assert result["pred"].shape == (20, N) and result["true"].shape == (20, N)


def test_ridge_r2_validates_arguments():
    feats = torch.zeros(4, 5, 2)
    with pytest.raises(ValueError, match="n_train"):
        positions.ridge_r2(feats, torch.arange(5), n_train=4)
    with pytest.raises(ValueError, match="targets"):
        positions.ridge_r2(feats, torch.arange(6), n_train=2)
    with pytest.raises(ValueError, match="features"):
        positions.ridge_r2(torch.zeros(4, 5), torch.arange(5), n_train=2)
    with pytest.raises(ValueError, match="ridge"):
        positions.ridge_r2(feats, torch.arange(5), n_train=2, ridge=-1.0)


def test_variance_probe_finds_position_in_causal_but_not_bidirectional_model():
    ids = torch.randint(0, 32, (256, 32), generator=torch.Generator().manual_seed(2))
    r2 = {
        mask: positions.position_probe(_model(mask), ids, kind="attn_logvar", target="log_position")["r2"]
        for mask in ("causal", "bidirectional")
    }
    assert r2["causal"] > 0.5
    assert r2["bidirectional"] < 0.05


def test_probe_features_shapes_and_errors():
    model = _model("causal")
    ids = torch.randint(0, 32, (3, 7))
    assert positions.probe_features(model, ids, "hidden").shape == (3, 7, 32)
    assert positions.probe_features(model, ids, "hidden+logvar", layer=1).shape == (3, 7, 33)
    assert positions.probe_features(model, ids, "update_logvar", layer=1).shape == (3, 7, 1)
    assert positions.probe_features(model, ids, "attn_logvar").shape == (3, 7, 1)
    with pytest.raises(ValueError, match="kind"):
        positions.probe_features(model, ids, "norm")
    with pytest.raises(ValueError, match="layer"):
        positions.probe_features(model, ids, "hidden", layer=9)
    with pytest.raises(ValueError, match="update_logvar"):
        positions.probe_features(model, ids, "update_logvar", layer=0)
    with pytest.raises(ValueError, match="target"):
        positions.position_probe(model, ids, target="rank")
    with pytest.raises(ValueError, match="RoPE"):
        positions.first_attention_output(_model("causal", pos="rope"), ids)


# ------------------------------------------------------------------ masked LM and its exact optimum


def test_masked_batch_masks_exactly_round_rate_n():
    seqs = torch.randint(0, 8, (5, 20))
    x, y = positions.masked_batch(seqs, 8, 0.3, torch.Generator().manual_seed(0))
    selected = y != -100
    assert selected.sum(1).tolist() == [6] * 5
    assert bool((x[selected] == 8).all()) and bool((x[~selected] == seqs[~selected]).all())
    assert bool((y[selected] == seqs[selected]).all())
    with pytest.raises(ValueError, match="rate"):
        positions.masked_batch(seqs, 8, 1.0)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_markov_masked_posterior_matches_enumeration(order):
    source = MarkovSource(3, order=order, alpha=0.5, seed=order)
    N = 6
    joint = source.joint(N)
    g = torch.Generator().manual_seed(0)
    x = source.sample(6, N, generator=g)
    visible = torch.rand(6, N, generator=g) < 0.5
    post = positions.markov_masked_posterior(source, x, visible)
    for b in range(6):
        index = tuple(int(x[b, t]) if visible[b, t] else slice(None) for t in range(N))
        sub = joint[index]
        hidden = [t for t in range(N) if not visible[b, t]]
        for i, t in enumerate(hidden):
            marginal = sub.sum(axis=tuple(j for j in range(len(hidden)) if j != i))
            np.testing.assert_allclose(post[b, t].numpy(), marginal / marginal.sum(), atol=1e-12)
        for t in range(N):
            if visible[b, t]:
                assert float(post[b, t, x[b, t]]) == pytest.approx(1.0)


def test_markov_masked_posterior_validates():
    source = MarkovSource(3, order=2, seed=0)
    x = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="MarkovSource"):
        positions.markov_masked_posterior("source", x, x == 0)
    with pytest.raises(ValueError, match="visible"):
        positions.markov_masked_posterior(source, x, torch.ones(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------- order experiment


def test_order_experiment_runs_and_records_excess():
    source = MarkovSource(4, order=2, alpha=0.5, seed=0)
    runs = positions.order_experiment(
        source,
        runs=(("causal", "none"), ("masked", "rope")),
        steps=4,
        batch_size=4,
        seq_len=8,
        d_model=16,
        n_heads=2,
        eval_every=2,
    )
    assert [r.label for r in runs] == ["causal, no position encoding", "bidirectional, RoPE"]
    for r in runs:
        assert r.steps == [0, 2, 4] and len(r.excess) == 3
        assert min(r.excess) > -0.05  # nothing beats the exact optimum (up to sampling noise)
    with pytest.raises(ValueError, match="runs"):
        positions.order_experiment(source, runs=(("causal", "sinusoidal"),), steps=1)
    with pytest.raises(TypeError, match="MarkovSource"):
        positions.order_experiment("source", steps=1)


def test_context_shuffle_changes_nothing_for_bidirectional_nope():
    source = MarkovSource(4, order=2, alpha=0.5, seed=1)
    kinds = (("masked", "none"), ("causal", "none"), ("masked", "rope"))
    runs = positions.order_experiment(
        source, runs=kinds, steps=2, batch_size=4, seq_len=8, d_model=16, n_heads=2, eval_every=2
    )
    nope, causal, rope = (positions.context_shuffle_penalty(r, source, n=32, seq_len=8) for r in runs)
    assert abs(nope["penalty"]) < 1e-5 and nope["max_logit_change"] < 1e-4 and nope["se"] < 1e-5
    assert causal["se"] > 0
    assert causal["max_logit_change"] > 1e-4
    assert rope["max_logit_change"] > 1e-6  # nearly uniform attention at initialisation, but not order-blind
    with pytest.raises(TypeError, match="OrderRun"):
        positions.context_shuffle_penalty("run", source)


def test_plots_return_figures():
    import matplotlib.pyplot as plt

    source = MarkovSource(4, order=2, alpha=0.5, seed=0)
    runs = positions.order_experiment(
        source,
        runs=(("causal", "none"), ("masked", "none")),
        steps=2,
        batch_size=4,
        seq_len=8,
        d_model=16,
        n_heads=2,
        eval_every=1,
    )
    ids = torch.randint(0, 32, (8, 6))
    probe = positions.position_probe(_model("causal"), ids, kind="attn_logvar", target="log_position")
    var = {"causal": np.linspace(1, 0.1, 6), "bidirectional": np.full(6, 0.5)}
    figs = [
        positions.plot_order_runs(runs, floors={"causal": 0.3}),
        positions.plot_probe({"a": probe}),
        positions.plot_position_signal(var, {"causal": probe}),
    ]
    for fig in figs:
        assert isinstance(fig, matplotlib.figure.Figure)
        plt.close(fig)


def test_offset_attention_of_a_random_model_is_close_to_even_attention():
    model = _model("causal")
    ids = torch.randint(0, 32, (4, 12))
    out = positions.offset_attention(model, ids, offsets=(0, 1, 2))
    assert out["mass"].shape == (model.config.n_layers, model.config.n_heads, 3)
    assert np.allclose(out["uniform"], np.mean(1.0 / np.arange(3, 13)))
    assert np.abs(out["mass"] - out["uniform"]).max() < 0.05  # small random weights: nearly even attention
    with pytest.raises(ValueError, match="offsets"):
        positions.offset_attention(model, ids, offsets=(12,))
    with pytest.raises(TypeError, match="model"):
        positions.offset_attention("model", ids)
