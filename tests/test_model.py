"""The Transformer in its three masks, the encoder-decoder, the KV cache and generation."""

import pytest
import torch

from anatomy import Config, EncoderDecoder, KVCache, Transformer, generate, kv_cache_bytes, to_input_major

SMALL = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


def model(**kw):
    torch.manual_seed(0)
    return Transformer(Config(**{**SMALL, **kw})).eval()


def ids(b=2, n=20, seed=0, vocab=61):
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(norm="layer", pos="learned", mlp="gelu_tanh", qkv_bias=True, out_bias=True, mlp_bias=True),
        dict(
            norm_position="post", final_norm=False, embed_norm=True, n_token_types=2, mlp="gelu", norm="layer"
        ),
        dict(pos="none", tie_embeddings=False),
        dict(lm_head=False),
    ],
)
def test_shapes(variant):
    m = model(**variant)
    out = m(ids())
    assert out.shape == (2, 20, 61 if m.config.lm_head else 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["reference", "tiled", "sdpa"])
@pytest.mark.parametrize("mask", ["causal", "prefix"])
def test_cached_decoding_equals_full_forward(backend, mask):
    m = model(mask=mask, attn_backend=backend, tile=8)
    x = ids()
    kw = dict(prefix_len=7) if mask == "prefix" else {}
    full = m(x, **kw)
    cache = m.new_cache(batch_size=2)
    pieces = [m(x[:, :7], cache=cache, **kw), m(x[:, 7:15], cache=cache, **kw)]
    pieces += [m(x[:, t : t + 1], cache=cache, **kw) for t in range(15, 20)]
    assert (torch.cat(pieces, 1) - full).abs().max() < 1e-5
    assert len(cache) == 20 and torch.equal(cache.tokens, x)


def test_backends_agree_inside_the_model():
    outs = [model(attn_backend=b)(ids()) for b in ["reference", "tiled", "sdpa"]]
    assert (outs[0] - outs[1]).abs().max() < 1e-5 and (outs[0] - outs[2]).abs().max() < 1e-5


def test_decoder_is_causal_encoder_is_not():
    x = ids(1, 16)
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 61
    for mask, changed in [("causal", False), ("bidirectional", True), ("prefix", True)]:
        m = model(mask=mask)
        kw = dict(prefix_len=12) if mask == "prefix" else {}
        hx = m(x, return_hidden=True, **kw).hidden_states
        hy = m(y, return_hidden=True, **kw).hidden_states
        delta = max((a[0, :10] - b[0, :10]).abs().max().item() for a, b in zip(hx, hy))
        assert (delta > 1e-3) == changed, (mask, delta)


def test_bidirectional_model_depends_on_future_tokens_through_every_layer():
    m = model(mask="bidirectional")
    out = m(ids(1, 12), return_attn=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 4, 12, 12)
    assert (out.attentions[0].triu(1) > 0).any()


def test_return_attn_is_causal_and_normalised():
    out = model()(ids(1, 12), return_attn=True, return_hidden=True)
    a = out.attentions[1]
    assert torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5) and (a.triu(1) == 0).all()
    assert len(out.hidden_states) == 3


def test_padding_mask_matches_unpadded():
    m = model(mask="bidirectional")
    x = ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    padded = m(x, attention_mask=mask)
    alone = m(x[1:, :6])
    assert (padded[1, :6] - alone[0]).abs().max() < 1e-5


def test_encoder_decoder_cache_and_generation():
    torch.manual_seed(0)
    ed = EncoderDecoder(Config(**SMALL), n_decoder_layers=3).eval()
    src, tgt = ids(2, 9, seed=1), ids(2, 7, seed=2)
    full = ed(tgt, encoder_input_ids=src)
    cache = ed.new_cache(2)
    inc = torch.cat(
        [ed(tgt[:, :4], cache, encoder_input_ids=src), ed(tgt[:, 4:], cache, encoder_input_ids=src)], 1
    )
    assert (full - inc).abs().max() < 1e-5
    with pytest.raises(ValueError, match="must re-encode"):
        ed(tgt[:, :1], cache, encoder_input_ids=ids(2, 9, seed=3))
    out = generate(ed, tgt[:, :1], 5, encoder_input_ids=src)
    assert out.shape == (2, 6)
    # Changing the source changes the decoder's output (the cross-attention is real).
    assert (ed(tgt, encoder_input_ids=ids(2, 9, seed=4)) - full).abs().max() > 1e-4


def test_generate_greedy_cached_equals_uncached_and_multiturn_reuse():
    m = model()
    prompt = ids(1, 5)
    once = generate(m, prompt, 12)
    # Without a cache, step by step with full forwards.
    seq = prompt
    for _ in range(12):
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(once, seq)
    cache = m.new_cache()
    turn1 = generate(m, prompt, 4, cache=cache)
    assert len(cache) == turn1.shape[1] - 1
    turn2 = generate(m, torch.cat([turn1, ids(1, 3, seed=5)], 1), 6, cache=cache)
    fresh = generate(m, torch.cat([turn1, ids(1, 3, seed=5)], 1), 6)
    assert torch.equal(turn2, fresh)


def test_generate_sampling_is_seeded():
    m = model()
    a = generate(m, ids(2, 4), 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = generate(m, ids(2, 4), 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    c = generate(m, ids(2, 4), 10, temperature=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # the seed decides, and another seed differs


def test_top_k_samples_only_among_the_k_best():
    m = model(init_std=0.5)  # peaked enough logits that the top 3 are well separated from the rest
    out = generate(m, ids(2, 4), 12, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = m(out[:, :-1])[:, 3:]  # the logits each new token was drawn from
    top = logits.topk(3, dim=-1).indices
    assert (top == out[:, 4:, None]).any(-1).all()
    # Without top_k, the same temperature leaves the top 3 (so the check above can fail).
    free = generate(m, ids(2, 4), 12, temperature=2.0, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        top = m(free[:, :-1])[:, 3:].topk(3, dim=-1).indices
    assert not (top == free[:, 4:, None]).any(-1).all()
    # top_k=1 is greedy whatever the temperature.
    greedy = generate(m, ids(2, 4), 6, temperature=5.0, top_k=1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(greedy, generate(m, ids(2, 4), 6))


def test_generate_stops_at_eos():
    m = model()
    prompt = ids(2, 4)
    out = generate(m, prompt, 8)  # greedy, no EOS
    eos = int(out[0, 6])
    stopped = generate(m, prompt, 8, eos_token_id=eos)
    for row in range(2):
        new = out[row, 4:].tolist()
        n = new.index(eos) + 1 if eos in new else len(new)  # the greedy tokens up to the first EOS
        assert stopped[row, 4 : 4 + n].tolist() == new[:n]
        assert (stopped[row, 4 + n :] == eos).all()  # a finished row is padded with EOS
    first = min(out[r, 4:].tolist().index(eos) + 1 if eos in out[r, 4:].tolist() else 8 for r in range(2))
    last = max(out[r, 4:].tolist().index(eos) + 1 if eos in out[r, 4:].tolist() else 8 for r in range(2))
    assert first <= 3 and stopped.shape[1] == 4 + last  # stops when every row has finished


def test_cache_bytes_formula_and_truncate():
    m = model()
    cache = m.new_cache(batch_size=2)
    m(ids(2, 13), cache=cache)
    assert cache.nbytes == kv_cache_bytes(2, 2, 8, 13, bytes_per_elem=4, batch_size=2)
    assert cache.allocated_nbytes >= cache.nbytes
    k_before = cache.keys(1)[:, :, :9].clone()
    cache.truncate(9)
    assert len(cache) == 9 and cache.tokens.shape == (2, 9) and torch.equal(cache.keys(1), k_before)
    # Re-running the dropped positions gives the same logits as the full forward.
    x = ids(2, 13)
    assert (m(x[:, 9:], cache=cache) - m(x)[:, 9:]).abs().max() < 1e-5


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m, c: m(ids(3, 4), cache=c), ValueError, "batch size 2"),
        (lambda m, c: m(ids(2, 70), cache=c), ValueError, "cache overflow"),
        (lambda m, c: m(torch.randn(2, 4)), TypeError, "integer torch.Tensor"),
        (lambda m, c: m(ids(2, 4) + 100), ValueError, r"token ids in \[0, 61\)"),
        (lambda m, c: m(ids(2, 4)[0]), ValueError, r"shape \(B, N\)"),
        (lambda m, c: m(ids(2, 4), cache="cache"), TypeError, "anatomy.KVCache"),
        (lambda m, c: m(ids(2, 4), prefix_len=2), ValueError, "only meaningful for a prefix LM"),
        (lambda m, c: c.truncate(5), ValueError, r"length must be an int in \[0, 0\]"),
        (lambda m, c: generate(m, ids(2, 4), -1), ValueError, "max_new_tokens"),
        (lambda m, c: generate(m, ids(2, 4), 3, temperature=-1.0), ValueError, "temperature"),
        (lambda m, c: generate(m, ids(2, 4).float(), 3), TypeError, "LongTensor"),
        (lambda m, c: generate(m, ids(2, 4), 3, top_k=0), ValueError, "top_k"),
    ],
)
def test_bad_inputs(call, exc, match):
    m = model()
    cache = m.new_cache(batch_size=2)
    with pytest.raises(exc, match=match):
        call(m, cache)


def test_cache_holding_another_prefix_is_refused():
    m = model()
    cache = m.new_cache()
    generate(m, ids(1, 5, seed=1), 3, cache=cache)
    with pytest.raises(ValueError, match="not a prefix of input_ids"):
        generate(m, ids(1, 9, seed=2), 3, cache=cache)


def test_cache_from_another_model_shape_is_refused():
    cache = model(n_layers=3).new_cache()
    with pytest.raises(ValueError, match="another shape"):
        model()(ids(1, 4), cache=cache)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_heads=6, n_kv_heads=4), "multiple of Config.n_kv_heads"),
        (dict(mask="sparse"), "Config.mask must be one of"),
        (dict(d_model=30, n_heads=4), "divisible by n_heads"),
        (dict(vocab_size=0), "Config.vocab_size must be a positive int"),
        (dict(pos="alibi"), "Config.pos must be one of"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**{**SMALL, **kw})


def test_kvcache_argument_checks():
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        KVCache(2, 1, 2, 8, 0)


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    m = Transformer(Config(**SMALL)).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x = ids(4, 32)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("variant", [dict(), dict(mlp="gelu", qkv_bias=True, tie_embeddings=False)])
def test_input_major_layout_same_numbers_faster_order(variant):
    """to_input_major changes memory order only: (in, out) storage, the same logits, cache and training."""
    ref, m = model(**variant), model(**variant)
    x = ids(2, 24)
    with torch.no_grad():
        before = ref(x)
    assert to_input_major(m) is m
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        assert torch.equal(p, p_ref), name
        if p.dim() == 2 and "embed" not in name:
            assert p.stride(0) == 1, (name, p.stride())  # Linear weights: input-major
    attn = m.layers[0].self_attn
    q, k, v = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
    assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()  # one (in, q+k+v) buffer
    assert q.stride() == (1, q.shape[0] + k.shape[0] + v.shape[0])
    if m.config.tie_embeddings:
        assert m.lm_head.weight is m.embed_tokens.weight
    with torch.no_grad():
        after = m(x)
        fused = attn.__dict__["_fused"][1]
        assert fused.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()  # a view, not a copy
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
        cached = generate(m, x[:1, :8], 8)
        assert torch.equal(cached, generate(ref, x[:1, :8], 8))
    # training still works, with the same gradients as the usual layout
    for net in (ref, m):
        net.train()
        torch.nn.functional.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        to_input_major("not a model")


def test_package_exports_and_lazy_transformers():
    """The public names of DESIGN.md's API are importable from anatomy, and importing it does not pull in
    transformers (the pretrained helpers load it on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, anatomy\n"
        "names = ['attention', 'Transformer', 'generate', 'from_hf', 'to_hf',\n"
        "         'speculative_generate', 'KVCache', 'count_tiles', 'to_input_major']\n"
        "assert all(callable(getattr(anatomy, n)) for n in names), names\n"
        "assert set(names) <= set(anatomy.__all__)\n"
        "assert 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_filled_by_another_model_of_the_same_shape_is_refused():
    # Same shape, other weights: its keys and values are wrong for this model (logits were off by ~6e-2).
    a, b = model(), model()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.01)
    cache = a.new_cache()
    a(ids(1, 5), cache=cache)
    with pytest.raises(ValueError, match="another model"):
        b(ids(1, 1), cache=cache)
    with pytest.raises(ValueError, match="another model"):
        generate(b, ids(1, 5), 2, cache=cache)
    assert len(cache) == 5  # refused before anything was written
    a(ids(1, 1), cache=cache)  # its own model may continue
    cache.clear()
    b(ids(1, 3), cache=cache)  # a cleared cache may be taken over
    with pytest.raises(ValueError, match="another model"):
        a(ids(1, 1), cache=cache)


def test_encoder_decoder_cache_knows_its_model():
    torch.manual_seed(0)
    ed1, ed2 = EncoderDecoder(Config(**SMALL)).eval(), EncoderDecoder(Config(**SMALL)).eval()
    src = ids(1, 5)
    cache = ed1.new_cache()
    ed1(ids(1, 3), cache=cache, encoder_input_ids=src)
    with pytest.raises(ValueError, match="another model"):
        ed2(ids(1, 1), cache=cache, encoder_input_ids=src)
    with pytest.raises(ValueError, match="another shape"):  # was an IndexError
        ed1(ids(1, 1), cache=model(n_layers=3).new_cache(), encoder_input_ids=src)
    with pytest.raises(TypeError, match="cache"):  # was an AttributeError
        ed1(ids(1, 1), cache="cache", encoder_input_ids=src)


def test_invalid_numbers_are_refused():
    m = model()
    for kw, match in (
        (dict(norm_eps=-1e-5), "norm_eps"), (dict(norm_eps=float("nan")), "norm_eps"),
        (dict(rope_theta=0.0), "rope_theta"), (dict(rope_theta=-1.0), "rope_theta"), (dict(d_ff=0), "d_ff"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Config(**{**SMALL, **kw})
    with pytest.raises(ValueError, match="max_len"):  # was silently max_seq_len
        m.new_cache(max_len=0)
    with pytest.raises(TypeError, match="dtype"):  # an integer cache rounded the keys
        KVCache(2, 1, 2, 8, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="logits_to_keep"):
        m(ids(1, 4), logits_to_keep=5)
    for mask in (torch.tensor([[1, 2, 1, 1]]), torch.tensor([[1, -1, 1, 1]])):
        with pytest.raises(ValueError, match="attention_mask"):
            m(ids(1, 4), attention_mask=mask)
    with pytest.raises(ValueError, match="token_type_ids"):
        m(ids(1, 4), token_type_ids=torch.zeros(1, 4, dtype=torch.long))
    bad = ((dict(temperature=-1.0), "temperature"), (dict(temperature=float("inf")), "temperature"),
           (dict(eos_token_id=-7), "eos_token_id"))  # fmt: skip
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            generate(m, ids(1, 4), 2, **kw)


def test_tile_longer_than_the_sequence_is_the_whole_sequence():
    # tile=10**6 on 12 tokens allocated tile^2 entries (a 1 TB allocation error); now one tile of 12.
    m = model(attn_backend="tiled", tile=10**6)
    small = model(attn_backend="tiled", tile=12)
    x = ids(1, 12)
    with torch.no_grad():
        out, ref = m(x, return_attn=True), small(x, return_attn=True)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.attentions[0], ref.attentions[0])
