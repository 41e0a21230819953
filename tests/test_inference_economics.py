"""Chapter 10's experiment (anatomy.experiments.inference_economics, its figures and tables in
inference_economics_plots): roofline, seed 002's cost model, latency estimates, measurements of this machine,
the classifiers."""

from __future__ import annotations

import math

import pytest
import torch

from anatomy import Config, cost
from anatomy.experiments import encoder_niche, inference_economics, inference_economics_plots

TINY = Config(
    vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, max_seq_len=256, attn_backend="reference"
)


def test_roofline_and_ridge():
    assert inference_economics.roofline(1.0, 100.0, 10.0) == 10.0
    assert inference_economics.roofline(50.0, 100.0, 10.0) == 100.0
    attainable = inference_economics.roofline(torch.tensor([1.0, 50.0]), 100.0, 10.0)
    assert torch.equal(attainable, torch.tensor([10.0, 100.0]))
    assert inference_economics.ridge_point(312e12, 2e12) == 156.0
    with pytest.raises(ValueError, match="peak_flops"):
        inference_economics.roofline(1.0, 0.0, 1.0)


def test_seed002_costs_reproduce_its_code():
    r = inference_economics.seed002_costs(7, 512, 128)
    assert math.isclose(r["prefill_ms"], 2 * 7e9 * 512 / 312e12 * 1e3)
    assert r["n_layers"] == 0  # the seed's shape guess truncates to zero layers for 7B
    assert r["decode_ms"] == 0.0
    table = {(p, n, g): pre for _, p, n, g, pre, _, _ in inference_economics.SEED002_LATENCY_TABLE}
    assert 6.5 < r["prefill_ms"] / table[(7.0, 512, 128)] < 7.5


def test_latency_estimate_counts_weight_reads():
    cfg = cost.published_config("Llama-2-7B")
    est = inference_economics.latency_estimate(cfg, 512, 128)
    # 128 steps, each reading ~13.5 GB of fp16 weights at 2 TB/s
    assert est["decode_ms"] >= est["decode_weights_ms"] >= 128 * 13e9 / 2e12 * 1e3
    assert est["prefill_ms"] > 0 and est["total_ms"] == pytest.approx(est["prefill_ms"] + est["decode_ms"])


def test_measurements_return_positive_rates():
    f = inference_economics.measure_matmul_flops(64, repeats=2)
    b = inference_economics.measure_bandwidth(2**20, repeats=2)
    assert f["median"] > 0 and f["flops"] == 2 * 64**3 and len(f["seconds"]) == 2
    assert b["median"] > 0 and b["bytes"] == 2 * 2**20


def test_argument_checks():
    with pytest.raises(ValueError, match="params_billion"):
        inference_economics.seed002_costs(0, 1, 1)


@pytest.mark.slow
@pytest.mark.pretrained
def test_compare_classifiers_on_the_real_models():
    pretrained = pytest.importorskip("anatomy.pretrained")
    try:
        encoder, enc_tok = pretrained.minilm()
        decoder, dec_tok = pretrained.smollm2(verbose=False)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(f"pretrained models not installed: {exc}")
    out = encoder_niche.compare_classifiers(encoder, enc_tok, decoder, dec_tok, encoder_repeats=2)
    with pytest.raises(ValueError, match="encoder_repeats"):
        encoder_niche.compare_classifiers(encoder, enc_tok, decoder, dec_tok, encoder_repeats=0)
    with pytest.raises(ValueError, match="clock"):
        encoder_niche.compare_classifiers(encoder, enc_tok, decoder, dec_tok, clock="elapsed")
    assert out["n_test"] == 32 and out["labels"] == list(encoder_niche.TOPICS)
    for name in encoder_niche.CLASSIFIERS:
        r = out[name]
        assert r["pred"].shape == (32,) and 0 <= r["accuracy"] <= 1 and r["seconds"] > 0 and r["flops"] > 0
    mini, chat = out[encoder_niche.CLASSIFIERS[0]], out[encoder_niche.CLASSIFIERS[2]]
    assert chat["flops"] > 5 * mini["flops"] and chat["tokens"] > mini["tokens"]
    assert mini["accuracy"] >= 0.75  # the encoder with prototypes works on this easy set


def test_batch_decode_sweep_counts_each_batch():
    from anatomy import Transformer

    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 9))
    r = inference_economics.batch_decode_sweep(model, ids, batches=(1, 3), repeats=1)
    assert r["batch"] == [1, 3] and all(s > 0 for s in r["seconds"])
    assert r["flops"][1] == cost.forward_flops(TINY, 1, 8, batch=3)["total"]
    assert r["intensity"][1] > r["intensity"][0]


def test_tables_and_figures_of_chapter_10():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    html = inference_economics_plots.decode_bytes_table(["Llama-3-70B"])
    assert "KV cache read at 8,192 tokens (GB)" in html and "Llama-3-70B" in html
    cls = {"labels": ["A", "B", "C", "D"], "n_test": 32}
    for i, k in enumerate(encoder_niche.CLASSIFIERS):
        cls[k] = {"tokens": 10.0 + i, "flops": 1e9 * (i + 1), "seconds": 0.01 * (i + 1), "accuracy": 0.5}
    assert inference_economics_plots.classifier_table(cls).count("<tr") == 1 + len(encoder_niche.CLASSIFIERS)
    hw = inference_economics.Hardware("test", 1e11, 1e10)
    sweep = {"chunk": [1, 4], "intensity": [0.5, 2.0], "achieved": [1e9, 4e9]}
    batched = {"intensity": [1.0], "achieved": [2e9]}
    runs = {
        ("prompt lookup", "copy-heavy"): {"alpha": 0.8, "speedup": 1.5},
        ("first 24 of 30 blocks", "copy-heavy"): {"alpha": 0.4, "speedup": 0.5},
    }
    exact = {(0, 1): 0.5, (1, 0): 0.5}
    dists = {"leviathan": exact, "argmax": {(0, 1): 1.0}}
    figs = [
        inference_economics_plots.plot_roofline(hw, sweep, batched),
        inference_economics_plots.plot_classifiers(cls),
        inference_economics_plots.plot_speculative(
            runs, {4: 0.1, 24: 0.4}, {4: 0.3, 24: 0.84}, gamma_lookup=4, gamma_trunc=2, k_run=24, v_lookup=2.0
        ),
        inference_economics_plots.plot_sampler_distributions(exact, dists),
    ]
    for fig in figs:
        assert fig.axes and all(ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes)
        plt.close(fig)
    with pytest.raises(TypeError, match="hardware"):
        inference_economics_plots.plot_roofline((1e11, 1e10), sweep, batched)


def test_seed002_latency_rows_and_table():
    real = {"7B": cost.published_config("Llama-2-7B"), "70B": cost.published_config("Llama-3-70B")}
    rows = inference_economics.seed002_latency_rows(real)
    assert len(rows) == len(inference_economics.SEED002_LATENCY_TABLE)
    assert all(r["own"]["n_layers"] == 0 and r["est"]["decode_ms"] > r["table_decode_ms"] for r in rows)
    assert inference_economics_plots.latency_table(rows).count("<tr") == 1 + len(rows)
    with pytest.raises(TypeError, match="real"):
        inference_economics.seed002_latency_rows({"7B": real["7B"]})


def test_expected_speedup_with_a_verification_cost():
    from anatomy import speculative as sp

    tpc = sp.expected_tokens_per_call(0.75, 5)
    assert sp.expected_speedup(0.75, 5, 8 / 70) == tpc / (5 * 8 / 70 + 1)  # Leviathan et al.: v = 1
    assert sp.expected_speedup(0.75, 5, 8 / 70, v=1.0) == sp.expected_speedup(0.75, 5, 8 / 70)
    lookup = sp.expected_tokens_per_call(0.88, 4)
    assert sp.expected_speedup(0.88, 4, 0.0, v=2.6) == pytest.approx(lookup / 2.6)
    with pytest.raises(ValueError, match="v must be"):
        sp.expected_speedup(0.5, 2, 0.1, v=0)


def test_truncated_drafts_agree_with_layer_draft():
    """One pass with every block's hidden state gives exactly what layer_draft(model, k) computes for each
    depth; the agreement is a share of positions, and it is 1 for a model whose later blocks do nothing."""
    from dataclasses import replace

    from anatomy import Transformer
    from anatomy import speculative as sp

    torch.manual_seed(0)
    cfg = replace(TINY, n_layers=4)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 30))
    start = 18
    got = inference_economics.truncated_drafts(model, ids, start, depths=(1, 2, 3))
    with torch.inference_mode():
        target = model(ids)[0, start - 1 : -1].argmax(-1)
        for k in (1, 2, 3):
            draft = sp.layer_draft(model, k)(ids)[0, start - 1 : -1].argmax(-1)
            assert got["alpha"][k] == (draft == target).double().mean().item()
            assert got["bytes_ratio"][k] == (
                cost.step_bytes(sp.layer_draft(model, k).config, 1)["weights"]
                / cost.step_bytes(cfg, 1)["weights"]
            )
    assert 0 < got["bytes_ratio"][1] < got["bytes_ratio"][2] < got["bytes_ratio"][3] < 1
    # the check can fail: with blocks 2..4 writing nothing into the residual stream, every depth agrees
    with torch.no_grad():
        for block in model.layers[1:]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    assert inference_economics.truncated_drafts(model, ids, start, depths=(1, 3))["alpha"] == {1: 1.0, 3: 1.0}
    # the caller's model keeps its mode, and nothing is recorded for autograd
    model.train()
    inference_economics.truncated_drafts(model, ids, start, depths=(1,))
    assert model.training and all(p.grad is None for p in model.parameters())


def _tiny_decoder():
    from anatomy import Transformer

    torch.manual_seed(0)
    return Transformer(TINY).eval()


_IDS = torch.randint(0, TINY.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))

# Bad inputs of truncated_drafts, collected by tests/test_bad_inputs.py
BAD_INPUTS = {
    "inference_economics.truncated_drafts": (
        lambda **kw: inference_economics.truncated_drafts(
            **{"model": _tiny_decoder(), "input_ids": _IDS, "start": 6, "depths": (1,), **kw}
        ),
        [
            ("model", None, TypeError),
            ("model", "gpt2", TypeError),
            ("input_ids", _IDS.float(), TypeError),
            ("input_ids", _IDS[0], ValueError),
            ("input_ids", _IDS.expand(2, -1), ValueError),
            ("start", 0, ValueError),
            ("start", 12, ValueError),
            ("start", 1.5, TypeError),
            ("depths", (), ValueError),
            ("depths", (2,), ValueError),
            ("depths", (0,), ValueError),
            ("depths", (1.5,), TypeError),
            ("depths", 1, ValueError),
        ],
    ),
}
