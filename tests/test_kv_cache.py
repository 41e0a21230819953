"""Chapter 9's experiment (anatomy.experiments.kv_cache, its figures and tables in kv_cache_plots): the KV
size formula against transformers' cache and seed 002's, the multi-turn helpers, stale caches of bidirectional
models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from anatomy import Config, Transformer, cost
from anatomy.experiments import kv_cache, kv_cache_plots

TINY = Config(
    vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, max_seq_len=256, attn_backend="reference"
)


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
    whole = tok(
        tok.apply_chat_template(
            [{"role": r, "content": c} for u, a in dialogue for r, c in (("user", u), ("assistant", a))]
        )
    )["input_ids"]
    assert torch.cat([torch.cat([s["prompt"], s["reply"]], 1) for s in segments], 1)[0].tolist() == whole
    torch.manual_seed(0)
    model = Transformer(replace(TINY, attn_backend="sdpa")).eval()
    r = kv_cache.dialogue_ttft(
        segments,
        model,
        prefix_lm=kv_cache.with_mask(model, "prefix"),
        encdec=kv_cache.encoder_decoder_like(model),
        repeats=1,
        final_repeats=3,
    )
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


def test_tables_and_figures_of_chapter_9():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 40))
    sweep = kv_cache.chunk_sweep(model, ids[:, :20], ids[:, 20:], chunks=(1, 4, 16), repeats=1)
    html = kv_cache_plots.chunk_sweep_table(sweep)
    assert html.count("<tr") == 4 and "achieved GFLOP/s" in html
    rows = kv_cache.kv_table(["Llama-3-70B"])
    assert "Llama-3-70B" in kv_cache_plots.kv_sizes_table(rows) and "x</td>" in kv_cache_plots.kv_sizes_table(
        rows
    )
    ttft = {"history": [0, 10], "new": [5, 4], "ttft": {"reuse": [0.1, 0.1], "recompute": [0.1, 0.3]}}
    flops = {"reuse": [1e9, 1e9], "recompute": [1e9, 3e9]}
    table = kv_cache_plots.dialogue_table(ttft, flops)
    assert kv_cache.STRATEGIES["reuse"] in table and kv_cache.STRATEGIES["prefix"] not in table
    assert "0.30 s / 3" in table
    stale = {
        name: {
            "key_change": [0.0, 0.5],
            "value_change": [0.0, 0.25],
            "max_logit_err": 1.0,
            "kl": 0.1,
            "flips": 0.5,
            "loss_fresh": 1.0,
            "loss_stale": 2.0,
        }
        for name in ("a", "b", "c")
    }
    assert kv_cache_plots.stale_table(stale).count("<tr") == 4
    for fig in (
        kv_cache_plots.plot_chunk_sweep(sweep),
        kv_cache_plots.plot_kv_variants("Llama-3-70B", 8192),
        kv_cache_plots.plot_dialogue(ttft, flops),
        kv_cache_plots.plot_stale(stale),
    ):
        assert fig.axes and all(ax.get_xlabel() for ax in fig.axes)
        plt.close(fig)
    with pytest.raises(ValueError, match="names"):
        kv_cache_plots.plot_stale(stale, ["a", "z"])
