"""anatomy.inference: counted FLOPs and bytes against torch's counter and real caches, the KV-size formula,
seed 002's cost model, the multi-turn helpers and their argument checks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from anatomy import Config, EncoderDecoder, Transformer, cost
from anatomy.book import tables
from anatomy.experiments import inference_economics, kv_cache
from anatomy.masks import dense_mask

TINY = Config(vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, max_seq_len=256,
              attn_backend="reference")


def _counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------ counting


@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
def test_visible_pairs_matches_dense_mask(mask):
    for n_q in range(1, 9):
        for n_k in range(n_q, 12):
            for p in (sorted({0, 1, min(3, n_k), n_k}) if mask == "prefix" else [None]):
                want = int(dense_mask(mask, n_q, n_k, prefix_len=p).sum())
                assert cost.visible_pairs(mask, n_q, n_k, p) == want, (mask, n_q, n_k, p)


def test_visible_pairs_closed_form_at_scale():
    # 8k tokens: the closed form must not build the matrix, and must agree with the triangle formula
    assert cost.visible_pairs("causal", 8192, 8192) == 8192 * 8193 // 2
    assert cost.visible_pairs("prefix", 8192, 8192, 8192) == 8192 * 8192


@pytest.mark.parametrize("cfg", [
    TINY,
    replace(TINY, tie_embeddings=False, n_kv_heads=6),
    replace(TINY, mlp="gelu", norm="layer", qkv_bias=True, out_bias=True, mlp_bias=True, pos="learned"),
])
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


def test_transformers_cache_has_the_formulas_bytes():
    """transformers' own cache (LlamaForCausalLM on the meta device) against the formula and our cache."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 29))
    cache = model.new_cache(batch_size=1)
    with torch.no_grad():
        model(ids, cache=cache)
    hf = kv_cache.transformers_kv_cache(TINY, ids)
    assert hf["nbytes"] == cache.nbytes == cost.kv_bytes_per_token(TINY, 4) * 29
    assert hf["n_tensors"] == 2 * TINY.n_layers and hf["cache_len"] == 29
    assert hf["shape"] == (1, TINY.n_kv_heads, 29, TINY.head_dim)
    mha = kv_cache.transformers_kv_cache(TINY, ids, n_kv_heads=TINY.n_heads)
    assert mha["nbytes"] * TINY.n_kv_heads == hf["nbytes"] * TINY.n_heads
    assert kv_cache.transformers_kv_cache(TINY, ids, dtype=torch.float16)["nbytes"] * 2 == hf["nbytes"]
    with pytest.raises(ValueError, match="input_ids"):
        kv_cache.transformers_kv_cache(TINY, ids[0])
    with pytest.raises(ValueError, match="n_kv_heads"):
        kv_cache.transformers_kv_cache(TINY, ids, n_kv_heads=0)
    with pytest.raises(ValueError, match="decoder"):
        kv_cache.transformers_kv_cache(replace(TINY, mask="bidirectional"), ids)


def test_seed002_formula_reproduces_the_seeds_stated_figure():
    llama = cost.published_config("Llama-3-70B")
    seed = kv_cache.seed002_kv_bytes_per_token(llama.n_layers, llama.d_model, 2)
    assert abs(seed / kv_cache.SEED002_LLAMA70B_KV_PER_TOKEN - 1) < 0.01


def test_kv_table_llama3_70b_and_seed002():
    row = next(r for r in kv_cache.kv_table(["Llama-3-70B"], 8192, 2))
    assert row["per_token"] == 327_680  # 2 x 80 x 8 x 128 x 2
    assert row["seed002_per_token"] == 5_242_880
    assert row["seed002_over_ours"] == 16
    assert row["mha_per_token"] == 2_621_440
    assert row["total"] == 327_680 * 8192
    assert cost.attention_kind(cost.published_config("Falcon-7B")) == "MQA"
    assert cost.attention_kind(cost.published_config("Llama-2-7B")) == "MHA"


def test_published_configs_have_their_published_sizes():
    billions = {name: cost.param_counts(cost.published_config(name))["total"] / 1e9 for name in cost.PUBLISHED}
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


def test_roofline_and_ridge():
    assert inference_economics.roofline(1.0, 100.0, 10.0) == 10.0
    assert inference_economics.roofline(50.0, 100.0, 10.0) == 100.0
    assert torch.equal(inference_economics.roofline(torch.tensor([1.0, 50.0]), 100.0, 10.0), torch.tensor([10.0, 100.0]))
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


# ------------------------------------------------------------------------------------------ models


def test_with_mask_shares_weights_and_changes_only_the_mask():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    twin = kv_cache.with_mask(model, "bidirectional")
    assert twin.config.mask == "bidirectional" and model.config.mask == "causal"
    assert twin.layers[0].self_attn.q_proj.weight is model.layers[0].self_attn.q_proj.weight
    ref = Transformer(replace(TINY, mask="bidirectional")).eval()
    ref.load_state_dict(model.state_dict())
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.allclose(twin(ids), ref(ids), atol=1e-6)
    enc = kv_cache.with_mask(model, "bidirectional", lm_head=False)
    with torch.no_grad():
        assert enc(ids).shape == (2, 9, TINY.d_model)
    with pytest.raises(TypeError, match="model"):
        kv_cache.with_mask("not a model", "causal")


def test_encoder_decoder_like_shares_blocks_and_refuses_a_changed_source():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    ed = kv_cache.encoder_decoder_like(model, seed=0)
    assert ed.layers[1].mlp is model.layers[1].mlp
    assert ed.encoder.layers[0] is model.layers[0]
    assert torch.isfinite(ed.layers[0].cross_attn.q_proj.weight).all()
    src = torch.randint(0, TINY.vocab_size, (1, 12))
    cache = ed.new_cache()
    with torch.no_grad():
        out = ed(torch.tensor([[0]]), cache=cache, encoder_input_ids=src)
        assert out.shape == (1, 1, TINY.vocab_size) and torch.isfinite(out).all()
        with pytest.raises(ValueError, match="re-encode"):
            ed(torch.tensor([[0]]), cache=cache, encoder_input_ids=src[:, :10])


def test_stale_cache_error_zero_for_a_decoder_not_for_a_prefix_lm():
    ids = torch.randint(0, TINY.vocab_size, (3, 30), generator=torch.Generator().manual_seed(0))
    out = {}
    for mask in ("causal", "prefix"):
        torch.manual_seed(0)
        out[mask] = kv_cache.stale_cache_error(Transformer(replace(TINY, mask=mask)), ids, 12, 6, 8)
    assert max(out["causal"]["key_change"]) < 1e-6 and out["causal"]["max_logit_err"] < 1e-5
    assert out["causal"]["kl"] < 1e-9
    assert out["prefix"]["key_change"][0] == 0  # layer 1's keys come from the embeddings alone
    assert out["prefix"]["key_change"][1] > 1e-3 and out["prefix"]["max_logit_err"] > 1e-6
    with pytest.raises(ValueError, match="ids"):
        kv_cache.stale_cache_error(Transformer(TINY), ids, 20, 6, 8)


class _ChatTokenizer:
    """The two methods chat_segments uses: a chat template rendering and a tokenizer on characters."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) % 97 for ch in text]}


def test_chat_segments_and_dialogue_ttft_on_a_tiny_model():
    tok = _ChatTokenizer()
    dialogue = [("hello there", "hi, how can I help"), ("tell me more", "here is more"), ("bye", "bye!")]
    segments = kv_cache.chat_segments(tok, dialogue)
    whole = tok(tok.apply_chat_template([{"role": r, "content": c} for u, a in dialogue
                                         for r, c in (("user", u), ("assistant", a))]))["input_ids"]
    assert torch.cat([torch.cat([s["prompt"], s["reply"]], 1) for s in segments], 1)[0].tolist() == whole
    torch.manual_seed(0)
    model = Transformer(replace(TINY, attn_backend="sdpa")).eval()
    r = kv_cache.dialogue_ttft(segments, model, prefix_lm=kv_cache.with_mask(model, "prefix"),
                          encdec=kv_cache.encoder_decoder_like(model), repeats=1, final_repeats=3)
    assert set(r["ttft"]) == {"reuse", "recompute", "prefix", "encdec"}
    assert len(r["times"]["reuse"][-1]) == 3 and len(r["times"]["prefix"][-1]) == 1
    assert max(r["logit_err"]) < 1e-4
    assert r["cache_len"] == len(whole) and r["cache_nbytes"] == cost.kv_bytes_per_token(TINY, 4) * len(whole)
    first = segments[0]["prompt"].shape[1] + segments[0]["reply"].shape[1]
    assert r["history"][0] == 0 and r["history"][1] == first
    flops = kv_cache.dialogue_flops(model.config, r["history"], r["new"])
    assert all(flops["recompute"][t] >= flops["reuse"][t] for t in range(3))
    one = kv_cache.turn_ttft(model, segments, 3, repeats=2)
    assert one["history"] == r["history"][2] and one["logit_err"] < 1e-4 and one["ratio"] > 0
    with pytest.raises(ValueError, match="turn"):
        kv_cache.turn_ttft(model, segments, 4)
    with pytest.raises(ValueError, match="segments"):
        kv_cache.dialogue_ttft([], model)


def test_chunk_sweep_counts_and_cache():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 40))
    r = kv_cache.chunk_sweep(model, ids[:, :20], ids[:, 20:], chunks=(1, 4, 16), repeats=1)
    assert r["chunk"] == [1, 4, 16] and r["cache_len"] == 20
    assert r["cache_nbytes"] == cost.kv_bytes_per_token(TINY, 4) * 20
    assert r["flops"][1] == cost.forward_flops(TINY, 4, 20, logits="last")["total"]
    assert r["intensity"] == sorted(r["intensity"])
    with pytest.raises(ValueError, match="chunks"):
        kv_cache.chunk_sweep(model, ids[:, :20], ids[:, 20:], chunks=(0,))
    with pytest.raises(ValueError, match="new_ids"):
        kv_cache.chunk_sweep(model, ids[:, :20], ids[:, 20:], chunks=(64,))


def test_html_table_and_argument_checks():
    table = tables.html_table(["a", "b<"], [(1, "x&y")])
    assert table.count("<tr>") == 2 and "b&lt;" in table and "x&amp;y" in table
    with pytest.raises(ValueError, match="row"):
        tables.html_table(["a"], [(1, 2)])
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
    out = inference_economics.compare_classifiers(encoder, enc_tok, decoder, dec_tok, encoder_repeats=2)
    with pytest.raises(ValueError, match="encoder_repeats"):
        inference_economics.compare_classifiers(encoder, enc_tok, decoder, dec_tok, encoder_repeats=0)
    with pytest.raises(ValueError, match="clock"):
        inference_economics.compare_classifiers(encoder, enc_tok, decoder, dec_tok, clock="elapsed")
    assert out["n_test"] == 32 and out["labels"] == list(inference_economics.TOPICS)
    for name in inference_economics.CLASSIFIERS:
        r = out[name]
        assert r["pred"].shape == (32,) and 0 <= r["accuracy"] <= 1 and r["seconds"] > 0 and r["flops"] > 0
    mini, chat = out[inference_economics.CLASSIFIERS[0]], out[inference_economics.CLASSIFIERS[2]]
    assert chat["flops"] > 5 * mini["flops"] and chat["tokens"] > mini["tokens"]
    assert mini["accuracy"] >= 0.75  # the encoder with prototypes works on this easy set
