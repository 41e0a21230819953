"""anatomy.cost: counted FLOPs and bytes against torch's FLOP counter and real caches, parameter counts,
the published configurations."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from anatomy import Config, EncoderDecoder, Transformer, cost
from anatomy.masks import dense_mask

TINY = Config(
    vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, max_seq_len=256, attn_backend="reference"
)


def _counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------ counting


@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
def test_visible_pairs_matches_dense_mask(mask):
    for n_q in range(1, 9):
        for n_k in range(n_q, 12):
            for p in sorted({0, 1, min(3, n_k), n_k}) if mask == "prefix" else [None]:
                want = int(dense_mask(mask, n_q, n_k, prefix_len=p).sum())
                assert cost.visible_pairs(mask, n_q, n_k, p) == want, (mask, n_q, n_k, p)


def test_visible_pairs_closed_form_at_scale():
    # 8k tokens: the closed form must not build the matrix, and must agree with the triangle formula
    assert cost.visible_pairs("causal", 8192, 8192) == 8192 * 8193 // 2
    assert cost.visible_pairs("prefix", 8192, 8192, 8192) == 8192 * 8192


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        replace(TINY, tie_embeddings=False, n_kv_heads=6),
        replace(TINY, mlp="gelu", norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True, pos="learned"),
    ],
)
def test_param_counts_match_the_model(cfg):
    model = Transformer(cfg)
    counts = cost.param_counts(cfg)
    assert counts["non_embedding"] == model.num_params()
    assert counts["total"] == model.num_params(non_embedding=False)


@pytest.mark.parametrize("n_past", [0, 5])
def test_forward_flops_match_torch_counter(n_past):
    # the reference backend computes every (query, key) pair, so a bidirectional model is counted exactly
    torch.manual_seed(0)
    cfg = replace(TINY, mask="bidirectional")
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 11 + n_past))
    cache = model.new_cache()
    if n_past:
        with torch.no_grad():
            model(ids[:, :n_past], cache=cache)
    got = _counted(lambda: model(ids[:, n_past:], cache=cache))
    assert got == cost.forward_flops(cfg, 11, n_past)["total"]


def test_forward_flops_batch_and_logits_options():
    one = cost.forward_flops(TINY, 10, 3)
    two = cost.forward_flops(TINY, 10, 3, batch=2)
    assert two["total"] == 2 * one["total"]
    last = cost.forward_flops(TINY, 10, 3, logits="last")
    assert last["head"] * 10 == one["head"] and last["linear"] == one["linear"]
    causal = cost.forward_flops(TINY, 10)["attention"]
    full = cost.forward_flops(TINY, 10, mask="bidirectional")["attention"]
    assert causal * 100 == full * 55  # 55 of 100 pairs are visible


def test_encdec_first_token_flops_match_torch_counter():
    torch.manual_seed(0)
    cfg = replace(TINY, n_kv_heads=6)
    model = EncoderDecoder(cfg).eval()
    src = torch.randint(0, cfg.vocab_size, (1, 13))
    got = _counted(lambda: model(torch.tensor([[1]]), encoder_input_ids=src))
    # the reference backend runs the decoder's 1 x 1 self-attention and 1 x 13 cross-attention densely
    assert got == cost.encdec_first_token_flops(cfg, 13)["total"]


def test_kv_bytes_formula_matches_a_real_cache():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    cache = model.new_cache(batch_size=1)
    with torch.no_grad():
        model(torch.randint(0, TINY.vocab_size, (1, 29)), cache=cache)
    assert cache.nbytes == cost.kv_bytes_per_token(TINY, 4) * 29


def test_published_configs_have_their_published_sizes():
    billions = {
        name: cost.param_counts(cost.published_config(name))["total"] / 1e9 for name in cost.PUBLISHED
    }
    assert abs(billions["Llama-3-70B"] - 70.6) < 0.1
    assert abs(billions["Llama-3-8B"] - 8.03) < 0.01
    assert abs(billions["Llama-2-7B"] - 6.74) < 0.01
    assert abs(billions["SmolLM2-135M"] - 0.1345) < 0.001


def test_step_bytes_and_intensity():
    b = cost.step_bytes(TINY, 1, 10, weight_bytes=2, kv_bytes=2)
    weights = (TINY.n_layers * cost.linear_params(TINY) + TINY.vocab_size * TINY.d_model) * 2
    assert b["weights"] == weights
    assert b["kv_read"] == 10 * cost.kv_bytes_per_token(TINY, 2)
    intensities = [cost.step_intensity(TINY, n) for n in (1, 4, 16, 64)]
    assert intensities == sorted(intensities)  # more tokens per call, more FLOPs per byte
    assert cost.decode_bytes(TINY, 10) == cost.step_bytes(TINY, 1, 10)["total"]


def test_argument_checks():
    with pytest.raises(ValueError, match="name"):
        cost.published_config("GPT-5")
    with pytest.raises(TypeError, match="config"):
        cost.forward_flops("smol", 1)
    with pytest.raises(ValueError, match="n_new"):
        cost.forward_flops(TINY, 0)
    with pytest.raises(ValueError, match="logits"):
        cost.forward_flops(TINY, 1, logits="some")
    with pytest.raises(ValueError, match="mask"):
        cost.visible_pairs("sliding", 2, 2)
    with pytest.raises(ValueError, match="prefix_len"):
        cost.visible_pairs("prefix", 2, 2)
