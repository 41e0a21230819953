"""Chapter 8's experiment (anatomy.experiments.causal_kernel) and the FLOP accounting it rests on
(anatomy.cost.forward_flops, attention_pairs), checked against PyTorch's own FLOP counter on real models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from anatomy import Config, Transformer, cost
from anatomy.cost import COUNTINGS, attention_pairs, forward_flops
from anatomy.experiments.causal_kernel import (
    CONTEXTS,
    PRESETS,
    attention_traffic,
    causal_saving,
    sdpa_cpu_tiles,
    time_attention,
    time_forward,
)
from anatomy.masks import causal_tile_ideal, count_tiles


def _counted_flops(cfg: Config, n_ctx: int, batch: int, prefix_len=None) -> int:
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, n_ctx))
    # With autograd on, the tiled kernel uses out-of-place baddbmm, which FlopCounterMode counts (it does
    # not count the in-place baddbmm_ of the no-grad path).
    with FlopCounterMode(display=False) as counter:
        model(ids, prefix_len=prefix_len) if prefix_len is not None else model(ids)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "mask,backend,counting,prefix_len",
    [
        ("bidirectional", "reference", "dense", None),
        ("causal", "reference", "dense", None),  # a dense kernel computes the whole square
        ("causal", "tiled", "tiles", None),  # ours skips the tiles above the diagonal
        ("prefix", "tiled", "tiles", 40),
    ],
)
@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_forward_flops_equal_pytorchs_flop_counter(mask, backend, counting, prefix_len, mlp):
    cfg = Config(
        vocab_size=300,
        d_model=96,
        n_layers=2,
        n_heads=6,
        n_kv_heads=2,
        mask=mask,
        mlp=mlp,
        attn_backend=backend,
        tile=32,
        max_seq_len=128,
    )
    predicted = forward_flops(cfg, 100, mask=mask, counting=counting, tile=32, batch=2, prefix_len=prefix_len)
    assert predicted["total"] == _counted_flops(cfg, 100, batch=2, prefix_len=prefix_len)


def test_params_match_a_real_model():
    cfg = Config(vocab_size=300, d_model=96, n_layers=3, n_heads=6, n_kv_heads=3, tie_embeddings=False)
    model = Transformer(cfg)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    counts = cost.param_counts(cfg)
    assert counts["blocks"] + counts["head"] == matrices  # the blocks' matrices and the (untied) LM head


def test_smollm2_preset_has_smollm2s_size():
    # 134,515,008 parameters in the checkpoint = matrices + tied embedding (counted once) + 61 RMSNorm vectors
    assert cost.param_counts(PRESETS["SmolLM2-135M"])["total"] == 134_515_008


@pytest.mark.parametrize(
    "mask,prefix_len",
    [("causal", None), ("prefix", 0), ("prefix", 70), ("prefix", 200), ("bidirectional", None)],
)
@pytest.mark.parametrize("n,tile", [(200, 32), (256, 64), (97, 16), (50, 128)])
def test_closed_forms_agree_with_the_tile_classifier(mask, prefix_len, n, tile):
    if prefix_len is not None and prefix_len > n:
        prefix_len = n
    c = count_tiles(mask, n, n, 8, tile=tile, q_offset=0, prefix_len=prefix_len)
    assert attention_pairs(mask, n, counting="ideal", prefix_len=prefix_len) * 32 == c.flops_needed
    tiles = attention_pairs(mask, n, counting="tiles", tile=tile, prefix_len=prefix_len)
    assert tiles * 32 == c.flops_computed
    traffic = attention_traffic(mask, n, 8, tile=tile, itemsize=4, prefix_len=prefix_len)
    assert traffic["flops"] == c.flops_computed
    visited = c.tiles_total - c.tiles_empty
    assert traffic["bytes"] == visited * 2 * tile * 8 * 4 + 2 * n * 8 * 4 + 4 * n


@pytest.mark.parametrize("n", [100, 512, 1000, 2048])
def test_rectangular_tiles_agree_with_the_tile_classifier(n):
    tile = sdpa_cpu_tiles(n)
    assert tile == ((256 if n >= 768 else 64 if n >= 192 else 32), 512)
    c = count_tiles("causal", n, n, 8, tile=tile, q_offset=0)
    assert attention_pairs("causal", n, counting="tiles", tile=tile) * 32 == c.flops_computed
    if n <= 512:  # a single key block: SDPA's causal path cannot skip anything
        assert c.computed_fraction == 1.0


def test_counting_modes_order_and_ideal():
    n = 1000
    ideal, tiles, dense = (attention_pairs("causal", n, counting=c, tile=128) for c in COUNTINGS)
    assert ideal == n * (n + 1) // 2 and dense == n * n and ideal < tiles < dense
    assert attention_pairs("bidirectional", n, counting="ideal") == n * n
    assert attention_pairs("prefix", n, prefix_len=n) == n * n
    assert attention_pairs("prefix", n, prefix_len=0) == ideal
    # square grid of whole tiles: exactly the (T + 1) / 2T of the tile classifier
    assert attention_pairs("causal", 1024, counting="tiles", tile=128) / 1024**2 == causal_tile_ideal(8)


@pytest.mark.parametrize("name", list(PRESETS))
def test_causal_saving_is_half_of_the_attention_share(name):
    shape, n = PRESETS[name], CONTEXTS[name]
    full = forward_flops(shape, n, mask="bidirectional")
    assert causal_saving(shape, n, counting="dense") == 0.0
    expected = full["attention"] / full["total"] * (n - 1) / (2 * n)  # causal keeps N(N+1)/2 of N^2 pairs
    assert causal_saving(shape, n) == pytest.approx(expected, rel=1e-12)
    # and it grows with the context length
    savings = [causal_saving(shape, c) for c in (512, 2048, 8192, 32768)]
    assert savings == sorted(savings)


def test_worked_numbers_of_the_research_notes():
    # science.md section 3.3 (stack only, no LM head): 20 %, 6.8 %, 1.3 %
    assert causal_saving(PRESETS["SmolLM2-135M"], 2048, lm_head=False) == pytest.approx(0.20, abs=0.005)
    assert causal_saving(PRESETS["Llama-3-70B"], 8192, lm_head=False) == pytest.approx(0.068, abs=0.001)
    assert causal_saving(PRESETS["GPT-3 175B"], 2048, lm_head=False) == pytest.approx(0.0135, abs=0.0005)
    # the LM head is part of the forward pass and only lowers the share
    for name, shape in PRESETS.items():
        assert causal_saving(shape, CONTEXTS[name]) < causal_saving(shape, CONTEXTS[name], lm_head=False)


def test_attention_traffic():
    full = attention_traffic("bidirectional", 4096, 64, tile=128, itemsize=2)
    causal = attention_traffic("causal", 4096, 64, tile=128, itemsize=2)
    assert full["flops"] == 4 * 4096**2 * 64
    assert causal["flops"] / full["flops"] == pytest.approx(causal_tile_ideal(32))
    # K and V are re-read once per query tile: intensity ~ 2 * tile / itemsize FLOP per byte
    assert full["intensity"] == pytest.approx(2 * 128 / 2, rel=0.05)
    assert causal["bytes"] < 0.6 * full["bytes"]


def test_bad_arguments():
    smol = PRESETS["SmolLM2-135M"]
    with pytest.raises(TypeError, match="config"):
        forward_flops({"n_layers": 2}, 10)
    with pytest.raises(ValueError, match="counting"):
        forward_flops(smol, 10, counting="approx")
    with pytest.raises(ValueError, match="n_past=0"):
        forward_flops(smol, 10, 5, counting="tiles")
    with pytest.raises(ValueError, match="mask"):
        attention_pairs("sliding", 10)
    with pytest.raises(ValueError, match="n_ctx"):
        causal_saving(smol, 0)
    with pytest.raises(ValueError, match="batch"):
        forward_flops(smol, 10, batch=0)


def test_time_attention_and_forward_rows():
    threads = torch.get_num_threads()
    rows = time_attention(
        [64, 96],
        {"causal": dict(mask="causal", backend="tiled"), "sdpa": dict(mask="causal", backend="sdpa")},
        heads=2,
        kv_heads=1,
        head_dim=16,
        tile=32,
        repeats=1,
    )
    assert [r["n"] for r in rows] == [64, 96] and all(r["causal"] > 0 and r["sdpa"] > 0 for r in rows)
    assert all(r["times"]["causal"] == [r["causal"]] for r in rows)  # one repeat: the median is the sample
    assert torch.get_num_threads() == threads  # restored
    cfg = Config(vocab_size=64, d_model=32, n_layers=1, n_heads=2, attn_backend="tiled", tile=16)
    rows = time_forward(cfg, [48], masks=("causal", "bidirectional", "prefix"), repeats=1)
    assert rows[0]["counted_causal"] == forward_flops(cfg, 48, counting="tiles", tile=16)["total"]
    assert rows[0]["counted_causal"] < rows[0]["counted_prefix"] < rows[0]["counted_bidirectional"]
    assert set(rows[0]["times"]) == {"causal", "bidirectional", "prefix"}
    with pytest.raises(ValueError, match="variants"):
        time_attention([64], {})


def test_draw_tile_map_draws_the_classifiers_map():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anatomy.experiments.causal_kernel import draw_tile_map
    from anatomy.masks import tile_map

    fig, ax = plt.subplots()
    tmap = draw_tile_map(ax, "prefix", 300, tile=64, prefix_len=100, title="prefix")
    assert torch.equal(tmap, tile_map("prefix", 300, 300, tile=64, prefix_len=100, q_offset=0))
    assert ax.get_title() == "prefix" and ax.get_xlim() == (0, 300)
    plt.close(fig)
