"""Property tests of the attention kernels and of the model with its KV cache.

The yardstick is ``definition``: attention written out from its definition in float64, looping over
explicit positions (which key may each query see: causal k <= q, prefix k < prefix_len or k <= q,
bidirectional all; which key/value head serves each query head: h // G), independent of the package's
mask predicate, ``dense_mask`` and ``reference`` backend, so that a bug shared by those cannot pass.

Error bounds follow FlashAttention's tests: a kernel's error against float64 must stay within a small
multiple of the error PyTorch itself makes evaluating the same textbook formula in that dtype, plus a
floor: a few units in the last place of the scores, carried to the output (any algorithm rounds the
scores; at scores in the hundreds that dominates, and PyTorch's own dense evaluation can be lucky).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import KERNEL_STATS, examples
from hypothesis import given, settings
from hypothesis import strategies as st

from anatomy import Config, EncoderDecoder, Transformer, attention, attention_probs, generate

BACKENDS = ("reference", "tiled", "sdpa")
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
BOUND = {torch.float32: 2.0, torch.float16: 2.0, torch.bfloat16: 2.0}  # x PyTorch's own error


# ------------------------------------------------------------------------------------------------------
# The independent reference
# ------------------------------------------------------------------------------------------------------


def sees(mask: str, q_pos: int, k_pos: int, prefix_len: int | None) -> bool:
    """May the query at absolute position q_pos attend to the key at k_pos? (the definition, per pair)"""
    if mask == "causal":
        return k_pos <= q_pos
    if mask == "prefix":
        return k_pos < prefix_len or k_pos <= q_pos
    return True


def allowed_matrix(mask, nq, nk, q_offset, prefix_len) -> torch.Tensor:
    return torch.tensor(
        [[sees(mask, q_offset + i, j, prefix_len) for j in range(nk)] for i in range(nq)], dtype=torch.bool
    )


def definition(q, k, v, mask, q_offset, prefix_len=None, pad=None, dtype=torch.float64):
    """softmax over the visible keys of (q . k) / sqrt(D), times v; computed in ``dtype``.

    q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D); query head h reads key/value head h // (Hq / Hkv).
    Returns (out, probs) with probs (B, Hq, Nq, Nk).
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    allowed = allowed_matrix(mask, Nq, Nk, q_offset, prefix_len)[None, None]  # (1, 1, Nq, Nk)
    if pad is not None:
        allowed = allowed & pad[:, None, None, :]
    kv_head = torch.tensor([h // G for h in range(Hq)])
    q, k, v = q.to(dtype), k[:, kv_head].to(dtype), v[:, kv_head].to(dtype)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhij,bhjd->bhid", probs, v), probs


def _record(dtype, backend, err, bound):
    entry = KERNEL_STATS.setdefault((str(dtype).replace("torch.", ""), backend), [0, 0.0, 0.0])
    entry[0] += 1
    entry[1] = max(entry[1], err)
    entry[2] = max(entry[2], err / bound)


# ------------------------------------------------------------------------------------------------------
# Drawing attention problems
# ------------------------------------------------------------------------------------------------------


@st.composite
def problems(draw, dtypes=(torch.float32,), padding=True):
    mask = draw(st.sampled_from(["causal", "bidirectional", "prefix"]))
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3, 4]))
    nk = draw(st.integers(1, 40))
    d = draw(st.sampled_from([1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64]))
    prefix_len = draw(st.integers(0, nk)) if mask == "prefix" else None
    if mask == "bidirectional":
        nq = draw(st.integers(1, 40))
        q_offset = draw(st.one_of(st.none(), st.integers(-5, nk)))
    else:
        nq = draw(st.integers(1, nk))
        # A negative offset is valid for a prefix mask (the first queries see the prefix keys only).
        lo = -3 if mask == "prefix" and prefix_len > 0 else 0
        q_offset = draw(st.one_of(st.none(), st.integers(lo, nk - nq)))
    offset = nk - nq if q_offset is None else q_offset
    # Tiles from 1 to far beyond the sequence, at most ~12 x 12 tiles a problem (the kernel loops in Python).
    tile = draw(st.one_of(st.integers(max(1, max(nq, nk) // 12), max(nq, nk) + 3), st.just(10**6)))
    pad = None
    if padding and draw(st.booleans()) and nk > 1:
        pad = torch.tensor(draw(st.lists(st.booleans(), min_size=b * nk, max_size=b * nk))).view(b, nk)
        pad[:, 0] = True  # every row sees key 0 (or, for a negative prefix offset, key 0 < prefix_len)
    dtype = draw(st.sampled_from(dtypes))
    # 16: scores in the hundreds (in half precision, where they would round to whole units, at most 4)
    scale = draw(st.sampled_from([0.1, 1.0, 1.0, 1.0, 4.0] + ([16.0] if dtype == torch.float32 else [])))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, hkv * groups, nq, d, generator=g) * scale).to(dtype)
    k = (torch.randn(b, hkv, nk, d, generator=g) * scale).to(dtype)
    v = torch.randn(b, hkv, nk, d, generator=g).to(dtype)
    return dict(
        q=q, k=k, v=v, mask=mask, q_offset=q_offset, offset=offset, prefix_len=prefix_len, tile=tile,
        pad=pad, dtype=dtype,
    )  # fmt: skip


def run(backend, p, q=None, k=None, v=None):
    return attention(
        p["q"] if q is None else q,
        p["k"] if k is None else k,
        p["v"] if v is None else v,
        p["mask"],
        q_offset=p["q_offset"],
        prefix_len=p["prefix_len"],
        backend=backend,
        tile=p["tile"],
        key_padding_mask=p["pad"],
    )


def check_accuracy(p, backends=BACKENDS):
    q, k, v, dtype = p["q"], p["k"], p["v"], p["dtype"]
    exact, probs = definition(q, k, v, p["mask"], p["offset"], p["prefix_len"], p["pad"])
    torch_err = (definition(q, k, v, p["mask"], p["offset"], p["prefix_len"], p["pad"], dtype)[0].double()
                 - exact).abs().max().item()  # fmt: skip
    # Floor: rounding the scores themselves (relative eps, inside a dot product of |q| . |k|) moves each
    # weight by that much, whatever the algorithm; float32 at scores in the hundreds cannot do better.
    G = q.shape[1] // k.shape[1]
    abs_scores = torch.einsum("bhid,bhjd->bhij", q.double().abs(), k.double().abs().repeat_interleave(G, 1))
    s_max = abs_scores.max().item() / math.sqrt(q.shape[-1])
    # In half precision the yardstick is PyTorch's own (much larger) error, the floor one unit in the last
    # place of the output.
    floor = EPS[dtype] * (1 + (s_max if dtype == torch.float32 else 1.0)) * v.double().abs().max().item()
    bound = BOUND[dtype] * torch_err + floor
    for backend in backends:
        out = run(backend, p)
        assert out.shape == q.shape and out.dtype == dtype
        err = (out.double() - exact).abs().max().item()
        _record(dtype, backend, err, bound)
        assert err <= bound, f"{backend}: error {err:.3g} > bound {bound:.3g} (PyTorch's own {torch_err:.3g})"
    return probs


@settings(max_examples=examples(1200))
@given(p=problems())
def test_every_backend_matches_the_definition_float32(p):
    probs = check_accuracy(p)
    # The attention matrix the tiled kernel reports is the definition's, too.
    got = attention_probs(
        p["q"], p["k"], p["mask"], q_offset=p["q_offset"], prefix_len=p["prefix_len"], tile=p["tile"],
        key_padding_mask=p["pad"],
    )  # fmt: skip
    assert (got.double() - probs).abs().max().item() <= 1e-5 * max(1.0, float(p["q"].abs().max()) ** 2)


@settings(max_examples=examples(250))
@given(p=problems(dtypes=(torch.float16, torch.bfloat16)))
def test_half_precision_error_within_a_multiple_of_pytorchs_own(p):
    check_accuracy(p)


# ------------------------------------------------------------------------------------------------------
# NaN and inf stay where they are
# ------------------------------------------------------------------------------------------------------

PLACES = ("q row", "q head", "batch item", "kv head", "k position", "v position")


@settings(max_examples=examples(300))
@given(
    p=problems(padding=False),
    place=st.sampled_from(PLACES),
    value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    data=st.data(),
)
def test_non_finite_input_stays_in_its_own_rows(p, place, value, data):
    """Poison one query row, query head, batch item, key/value head or key position; every output that
    does not depend on it is bit-for-bit the clean run's, and every output that does is NaN (for NaN in a
    query, a whole row; for a key position, the rows that see it)."""
    q, k, v = p["q"], p["k"], p["v"]
    B, Hq, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    b = data.draw(st.integers(0, B - 1))
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    affected = torch.zeros(B, Hq, Nq, dtype=torch.bool)  # outputs allowed to change
    must_be_nan = torch.zeros(B, Hq, Nq, dtype=torch.bool)
    visible = allowed_matrix(p["mask"], Nq, Nk, p["offset"], p["prefix_len"])  # (Nq, Nk)
    if place == "q row":
        h, i = data.draw(st.integers(0, Hq - 1)), data.draw(st.integers(0, Nq - 1))
        q2[b, h, i, data.draw(st.integers(0, q.shape[-1] - 1))] = value
        affected[b, h, i] = must_be_nan[b, h, i] = True
    elif place == "q head":
        h = data.draw(st.integers(0, Hq - 1))
        q2[b, h] = value
        affected[b, h] = must_be_nan[b, h] = True
    elif place == "batch item":
        q2[b], k2[b], v2[b] = value, value, value
        affected[b] = True
        must_be_nan[b] = value != value  # NaN everywhere gives NaN; inf may give inf
    elif place == "kv head":
        j = data.draw(st.integers(0, Hkv - 1))
        (k2 if data.draw(st.booleans()) else v2)[b, j] = value
        affected[b, j * G : (j + 1) * G] = True
    else:
        j, pos = data.draw(st.integers(0, Hkv - 1)), data.draw(st.integers(0, Nk - 1))
        (k2 if place == "k position" else v2)[b, j, pos] = value
        # 0 * NaN is NaN: a kernel may multiply a hidden key's zero weight by its value, so any row of the
        # group may change; the rows that see the key must be NaN when the value is NaN.
        affected[b, j * G : (j + 1) * G] = True
        if value != value:
            must_be_nan[b, j * G : (j + 1) * G] = visible[:, pos][None, :]
    for backend in BACKENDS:
        clean, dirty = run(backend, p), run(backend, p, q2, k2, v2)
        keep = ~affected
        assert torch.equal(dirty[keep], clean[keep]), f"{backend}: {place} poisoned other outputs"
        assert dirty[must_be_nan].isnan().all(), f"{backend}: {place} = {value} lost (NaN in, not NaN out)"
        if place in ("q row", "q head"):
            assert not torch.isfinite(dirty[affected]).any(), f"{backend}: {place} = {value} came out finite"


# ------------------------------------------------------------------------------------------------------
# The model and its cache
# ------------------------------------------------------------------------------------------------------


@st.composite
def configs(draw):
    pos = draw(st.sampled_from(["rope", "learned", "none"]))
    hkv = draw(st.integers(1, 2))
    n_heads = hkv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 6, 8] if pos == "rope" else [1, 3, 4, 5, 8]))
    return Config(
        vocab_size=draw(st.integers(5, 40)),
        d_model=draw(st.sampled_from([8, 12, 16])),
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads,
        n_kv_heads=hkv,
        head_dim=head_dim,
        d_ff=draw(st.integers(1, 24)),
        max_seq_len=48,
        pos=pos,
        norm=draw(st.sampled_from(["rms", "layer"])),
        norm_position=draw(st.sampled_from(["pre", "post"])),
        mlp=draw(st.sampled_from(["swiglu", "gelu", "gelu_tanh"])),
        qkv_bias=draw(st.booleans()),
        attn_backend=draw(st.sampled_from(list(BACKENDS))),
        tile=draw(st.integers(1, 20)),
        init_std=0.2,  # large enough that the positions' logits differ visibly
    )


def _close(a, b):
    return (a - b).abs().max().item() <= 2e-5 * max(1.0, b.abs().max().item())


@settings(max_examples=examples(60))
@given(config=configs(), n=st.integers(2, 24), data=st.data())
def test_cached_decoding_equals_the_full_forward(config, n, data):
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    model = Transformer(config).eval()
    ids = torch.randint(0, config.vocab_size, (data.draw(st.integers(1, 2)), n))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=3))))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(batch_size=ids.shape[0])
        pieces = [model(ids[:, a:b], cache=cache) for a, b in zip([0, *cuts], [*cuts, n])]
    assert len(cache) == n and torch.equal(cache.tokens, ids)
    assert _close(torch.cat(pieces, dim=1), full)


@settings(max_examples=examples(30))
@given(config=configs(), turns=st.lists(st.integers(1, 5), min_size=2, max_size=3), data=st.data())
def test_multi_turn_conversation_through_one_cache_equals_a_fresh_run(config, turns, data):
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    model = Transformer(config).eval()
    cache = model.new_cache()
    convo = torch.randint(0, config.vocab_size, (1, 2))
    for user in turns:
        convo = torch.cat([convo, torch.randint(0, config.vocab_size, (1, user))], dim=1)
        with_cache = generate(model, convo, 3, cache=cache)
        fresh = generate(model, convo, 3)
        assert torch.equal(with_cache, fresh)
        convo = with_cache
    # The cache holds the whole conversation but its last token, as the same forward pass would.
    with torch.no_grad():
        full = model(convo[:, :-1])
        last = model(convo[:, -1:], cache=cache)
        assert _close(last[:, -1], model(convo)[:, -1]) and full.shape[1] == len(cache) - 1


@settings(max_examples=examples(20))
@given(config=configs(), n=st.integers(2, 10), n_src=st.integers(1, 8), data=st.data())
def test_encoder_decoder_cached_decoding_equals_the_full_forward(config, n, n_src, data):
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    model = EncoderDecoder(config).eval()
    src = torch.randint(0, config.vocab_size, (1, n_src))
    ids = torch.randint(0, config.vocab_size, (1, n))
    cut = data.draw(st.integers(1, n - 1))
    with torch.no_grad():
        full = model(ids, encoder_input_ids=src)
        cache = model.new_cache()
        a = model(ids[:, :cut], cache=cache, encoder_input_ids=src)
        b = model(ids[:, cut:], cache=cache, encoder_input_ids=src)
    assert _close(torch.cat([a, b], dim=1), full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_nan_in_one_head_is_nan_out_for_every_backend(backend):
    # One query head's weights NaN: that head's output is NaN for every position, o_proj mixes it into
    # every channel, so every logit must be NaN (the sdpa backend once returned 0 for those rows instead).
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=20, d_model=16, n_layers=1, n_heads=2, attn_backend=backend)).eval()
    with torch.no_grad():
        model.layers[0].self_attn.q_proj.weight[:8] = float("nan")
        ids = torch.randint(0, 20, (1, 6))
        assert model(ids).isnan().all()  # square causal block
        cache = model.new_cache()
        model(ids[:, :5], cache=cache)
        assert model(ids[:, 5:], cache=cache).isnan().all()  # one-token decoding step
    enc = Transformer(Config(vocab_size=20, d_model=16, n_layers=1, n_heads=2, mask="bidirectional",
                             attn_backend=backend)).eval()  # fmt: skip
    with torch.no_grad():
        enc.layers[0].self_attn.q_proj.weight[:8] = float("nan")
        assert enc(ids).isnan().all()
