"""Every backend of anatomy.attention against the float64 dense reference; gradients; bad inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anatomy import attention, attention_probs, count_tiles
from anatomy.kernels.tiled import tiled_attention

BACKENDS = ["reference", "tiled", "sdpa"]


def make_qkv(b, hq, hkv, nq, nk, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, hq, nq, d, generator=g, dtype=dtype),
        torch.randn(b, hkv, nk, d, generator=g, dtype=dtype),
        torch.randn(b, hkv, nk, d, generator=g, dtype=dtype),
    )


def float64_reference(q, k, v, mask, **kw):
    return attention(q.double(), k.double(), v.double(), mask, backend="reference", **kw)


@settings(max_examples=80, deadline=None)
@given(
    mask=st.sampled_from(["causal", "bidirectional", "prefix"]),
    backend=st.sampled_from(BACKENDS),
    b=st.integers(1, 2),
    hkv=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3]),
    nk=st.integers(1, 90),
    d=st.sampled_from([4, 8, 16, 32]),
    tile=st.sampled_from([1, 7, 16, 32, 128]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_backends_match_float64_reference(mask, backend, b, hkv, groups, nk, d, tile, seed, data):
    nq = data.draw(st.integers(1, nk))
    q_offset = data.draw(st.one_of(st.none(), st.integers(0, nk - nq)))
    prefix_len = data.draw(st.integers(0, nk)) if mask == "prefix" else None
    q, k, v = make_qkv(b, hkv * groups, hkv, nq, nk, d, seed)
    kw = dict(q_offset=q_offset, prefix_len=prefix_len)
    expected = float64_reference(q, k, v, mask, **kw)
    out = attention(q, k, v, mask, backend=backend, tile=tile, **kw)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert (out.double() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
def test_larger_shapes_within_1e5(backend, mask):
    q, k, v = make_qkv(1, 8, 2, 384, 384, 64, seed=1)
    kw = dict(prefix_len=100) if mask == "prefix" else {}
    err = (
        (attention(q, k, v, mask, backend=backend, **kw).double() - float64_reference(q, k, v, mask, **kw))
        .abs()
        .max()
    )
    assert err <= 1e-5


def test_key_padding_mask_matches_dropping_the_keys():
    q, k, v = make_qkv(2, 4, 2, 10, 30, 8, seed=3)
    pad = torch.ones(2, 30, dtype=torch.bool)
    pad[0, 20:] = False
    for backend in BACKENDS:
        out = attention(q, k, v, "bidirectional", backend=backend, tile=8, key_padding_mask=pad)
        trimmed = attention(q[:1], k[:1, :, :20], v[:1, :, :20], "bidirectional", backend="reference")
        assert (out[:1] - trimmed).abs().max() < 1e-5
        assert (
            out[1:] - attention(q[1:], k[1:], v[1:], "bidirectional", backend="reference")
        ).abs().max() < 1e-5


@pytest.mark.parametrize("mask,prefix_len", [("causal", None), ("prefix", 9), ("bidirectional", None)])
def test_tiled_gradients_match_reference(mask, prefix_len):
    q, k, v = (t.requires_grad_() for t in make_qkv(2, 4, 2, 21, 33, 8, seed=5, dtype=torch.float64))
    grads = []
    for backend in ["reference", "tiled"]:
        out = attention(q, k, v, mask, prefix_len=prefix_len, backend=backend, tile=8)
        grads.append(torch.autograd.grad((out * out.sin()).sum(), (q, k, v)))
    for ref, ours in zip(*grads):
        assert (ref - ours).abs().max() < 1e-10


def _rising_scores(seed, dtype=torch.float32):
    """Inputs whose scores rise from key tile to key tile by far more than the kernel's rescaling
    threshold, so that its lazy rescaling of the running maximum has to fire (checked below)."""
    q, k, v = make_qkv(1, 4, 2, 40, 40, 8, seed=seed, dtype=dtype)
    q = q.abs() + 0.5
    k = k.abs() * torch.linspace(0.2, 12.0, 40, dtype=dtype)[:, None]  # later keys score far higher
    return q, k, v


def test_tiled_lazy_rescaling_is_exercised_and_exact():
    from anatomy.kernels.tiled import LOG2E, RESCALE_THRESHOLD

    q, k, v = _rising_scores(seed=13)
    tile = 8
    # Precondition: for some row block, a later visible tile's maximum exceeds the running maximum by more
    # than the threshold (in base 2), so the rescaling branch runs; without it, this test would not test it.
    s = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * 8**-0.5 * LOG2E
    s = s.masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), float("-inf"))
    tile_max = s.unflatten(-1, (5, tile)).amax(-1)  # (B, H, Nq, key tiles)
    assert (tile_max[..., 1:] - tile_max[..., :-1].cummax(-1).values > RESCALE_THRESHOLD).any()
    for mask, pl in [("causal", None), ("prefix", 11), ("bidirectional", None)]:
        expected = float64_reference(q, k, v, mask, prefix_len=pl)
        out = attention(q, k, v, mask, prefix_len=pl, backend="tiled", tile=tile)
        assert (out.double() - expected).abs().max() <= 1e-5
        stats = {}
        tiled_attention(q, k, v, mask, q_offset=0, prefix_len=pl, tile=tile, stats=stats)
        counted = count_tiles(mask, 40, 40, 8, tile=tile, prefix_len=pl)
        assert stats["tiles"] == counted.tiles_full + counted.tiles_partial
        assert 0 < stats["rescaled"] <= stats["later_tiles"] < stats["tiles"]
        probs = attention_probs(q, k, mask, prefix_len=pl, tile=tile)  # normalised by the kernel's lse
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    q, k, v = (t.requires_grad_() for t in _rising_scores(seed=13, dtype=torch.float64))
    grads = []
    for backend in ["reference", "tiled"]:
        out = attention(q, k, v, "causal", backend=backend, tile=tile)
        grads.append(torch.autograd.grad((out * out.cos()).sum(), (q, k, v)))
    for ref, ours in zip(*grads):
        assert (ref - ours).abs().max() < 1e-10


def test_tiled_stats_random_scores_rarely_rescale():
    q, k, v = make_qkv(1, 4, 4, 512, 512, 16, seed=19)
    stats = {}
    tiled_attention(q, k, v, "causal", q_offset=0, prefix_len=None, tile=64, stats=stats)
    # 8 row blocks of 64 queries visit 1 + 2 + ... + 8 = 36 tiles, 28 of them after their block's first;
    # unit-variance scores never rise by 8 (in base 2) above the first tile's maximum.
    assert stats == {"tiles": 36, "later_tiles": 28, "rescaled": 0}
    with pytest.raises(TypeError, match="stats must be a dict"):
        tiled_attention(q, k, v, "causal", q_offset=0, prefix_len=None, tile=64, stats=[])


def test_tiled_rescale_check_large_sums_without_a_rise():
    # The kernel checks a later tile's row sums of exp2(score - running max) against 2**threshold: no term
    # exceeds its sum, so small sums prove that no score rose past the threshold. A large sum alone is not
    # a rise: here every key of the second tile scores 7 (base 2) above the first tile's maximum, so the
    # sums are 8 * 2**7 = 1024 > 2**8, but the maximum must not be raised. One key 9 above raises it
    # (rescaled 1). Both must match float64.
    from anatomy.kernels.tiled import LOG2E, RESCALE_THRESHOLD

    assert RESCALE_THRESHOLD == 8.0  # the scores below are placed around it
    q = torch.ones(1, 1, 8, 1)
    v = torch.randn(1, 1, 16, 1, generator=torch.Generator().manual_seed(3))
    for rise, rescaled in ((7.0, 0), (9.0, 1)):
        k = torch.zeros(1, 1, 16, 1)
        k[0, 0, 8:, 0] = 7.0 / LOG2E  # scores q.k / sqrt(1) in base 2: 0 in tile 0, 7 in tile 1
        k[0, 0, 15, 0] = rise / LOG2E
        stats = {}
        # return_lse=True: the running-maximum path, whose rescale check this is (float32 inference without
        # log-sum-exp takes the kernel's unshifted path, which has no running maximum to raise)
        out, _ = tiled_attention(
            q, k, v, "bidirectional", q_offset=0, prefix_len=None, tile=8, stats=stats, return_lse=True
        )
        assert stats == {"tiles": 2, "later_tiles": 1, "rescaled": rescaled}
        assert (out.double() - float64_reference(q, k, v, "bidirectional")).abs().max() <= 1e-6


def test_tiled_large_scores_stay_finite_and_as_accurate_as_dense_float32():
    # Scores in the thousands: exp() of them overflows unless every tile is taken relative to a maximum.
    # At that size float32 itself rounds the scores by ~1e-4, so the yardstick is the dense float32 kernel.
    q, k, v = make_qkv(2, 4, 2, 50, 50, 16, seed=17)
    q, k = 30 * q, 30 * k
    for mask in ["causal", "bidirectional"]:
        expected = float64_reference(q, k, v, mask)
        dense_err = (attention(q, k, v, mask, backend="reference").double() - expected).abs().max()
        out = attention(q, k, v, mask, backend="tiled", tile=16)
        assert torch.isfinite(out).all()
        assert (out.double() - expected).abs().max() <= 4 * dense_err


def test_tiled_gradcheck():
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 1, 5, 9, 4, seed=7, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, "causal", backend="tiled", tile=3), (q, k, v)
    )


def test_attention_probs_rows_sum_to_one_and_reproduce_output():
    q, k, v = make_qkv(1, 4, 2, 17, 17, 8, seed=9)
    for mask, pl in [("causal", None), ("prefix", 5), ("bidirectional", None)]:
        p = attention_probs(q, k, mask, prefix_len=pl, tile=4)
        assert torch.allclose(p.sum(-1), torch.ones(1, 4, 17), atol=1e-6)
        if mask == "causal":
            assert (p.triu(1) == 0).all()
        out = p @ v.repeat_interleave(2, dim=1)
        assert (out - attention(q, k, v, mask, prefix_len=pl, backend="reference")).abs().max() < 1e-5


def test_sdpa_offset_is_bottom_right_aligned():
    # A block of 3 queries at the end of 10 keys: SDPA's is_causal would align it top-left (wrong).
    q, k, v = make_qkv(1, 2, 2, 3, 10, 8, seed=11)
    expected = float64_reference(q, k, v, "causal")
    assert (attention(q, k, v, "causal", backend="sdpa").double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda q, k, v: (q[0], k, v, {}), ValueError, "q must have 4 dims"),
        (lambda q, k, v: (q, k[:, :, :, :4], v[:, :, :, :4], {}), ValueError, "same head_dim"),
        (lambda q, k, v: (q, k, v[:, :, :5], {}), ValueError, "k and v must have the same shape"),
        (lambda q, k, v: (q[:, :3], k, v, {}), ValueError, r"multiple of the number of key/value heads"),
        (lambda q, k, v: (q, k[:1], v[:1], {}), ValueError, "same batch size"),
        (lambda q, k, v: (q, k, v, {"mask": "full"}), ValueError, "mask must be one of"),
        (lambda q, k, v: (q, k, v, {"backend": "flash"}), ValueError, "backend must be one of"),
        (lambda q, k, v: (q, k, v, {"mask": "prefix"}), ValueError, "needs prefix_len"),
        (
            lambda q, k, v: (q, k, v, {"mask": "prefix", "prefix_len": 13}),
            ValueError,
            "prefix_len must be in",
        ),
        (lambda q, k, v: (q, k, v, {"q_offset": -1}), ValueError, "no visible key"),
        (lambda q, k, v: (q, k, v, {"q_offset": 5}), ValueError, "q_offset \\+ Nq must be <= Nk"),
        (lambda q, k, v: (q, k, v, {"q_offset": 1.5}), TypeError, "q_offset must be an int"),
        (lambda q, k, v: (q, k, v, {"tile": 0}), ValueError, "tile must be a positive int"),
        (lambda q, k, v: (q.long(), k, v, {}), TypeError, "floating-point"),
        (lambda q, k, v: (q, k.double(), v, {}), TypeError, "share a dtype"),
        (lambda q, k, v: ([1], k, v, {}), TypeError, "q must be a torch.Tensor"),
        (
            lambda q, k, v: (
                q,
                k,
                v,
                {"mask": "bidirectional", "key_padding_mask": torch.zeros(2, 12, dtype=torch.bool)},
            ),
            ValueError,
            "no visible key",
        ),
        (
            lambda q, k, v: (q, k, v, {"key_padding_mask": torch.ones(2, 11, dtype=torch.bool)}),
            ValueError,
            r"key_padding_mask must have shape",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(change, exc, match):
    q, k, v = make_qkv(2, 4, 2, 8, 12, 8, seed=0)
    q, k, v, kw = change(q, k, v)
    for backend in ["tiled"] if "backend" in kw else BACKENDS:
        with pytest.raises(exc, match=match):
            attention(q, k, v, **{"backend": backend, **kw})


def test_triton_backend_without_triton_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    q, k, v = make_qkv(1, 2, 2, 4, 4, 8, seed=0)
    with pytest.raises(ImportError, match="pip install triton"):
        attention(q, k, v, backend="triton")


# ---- defects of issue 16: each of these failed before its fix ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mask, nq, nk, poison",
    [
        ("causal", 1, 9, "q"),  # one-token decoding step
        ("causal", 6, 6, "q"),  # square causal block (is_causal)
        ("bidirectional", 6, 6, "q"),
        ("causal", 3, 9, "q"),  # query block at the end of a cache (explicit mask)
        ("causal", 1, 9, "k"),
        ("bidirectional", 2, 2, "k"),
        ("causal", 1, 1, "k"),
    ],
)
def test_nan_in_is_nan_out(backend, mask, nq, nk, poison):
    # PyTorch's CPU SDPA returned 0 (or other finite numbers) for these; the formula gives NaN.
    q, k, v = make_qkv(1, 2, 1, nq, nk, 4, seed=1)
    for value in (float("nan"), float("inf")):
        q2, k2 = q.clone(), k.clone()
        if poison == "q":
            q2[0, 1, nq - 1, 0] = value
            hit = (0, 1, nq - 1)
        else:
            k2[0, 0, nk - 1, 0] = float("nan")  # the last key: the last row sees it
            hit = (0, 0, nq - 1)
        clean, out = attention(q, k, v, mask, backend=backend), attention(q2, k2, v, mask, backend=backend)
        assert out[hit].isnan().all(), (backend, mask, value)
        if poison == "q":
            assert torch.equal(out[0, 0], clean[0, 0]) and torch.equal(out[0, 1, :-1], clean[0, 1, :-1])


def test_tiled_nan_in_one_batch_item_or_head_leaves_the_others_bit_for_bit():
    # Batch item 1 (and head 1 of batch 0) have scores rising by far more than the rescaling threshold from
    # key tile to key tile; a NaN in batch 0 / head 0 of the same row block used to stop every row from
    # rescaling (one max over all rows), so the others overflowed to NaN.
    q, k, v = _rising_scores(seed=13)
    q, k, v = torch.cat([q, q]), torch.cat([k, k]), torch.cat([v, v])  # 2 batch items, 4 heads, 2 kv heads
    clean = attention(q, k, v, "causal", backend="tiled", tile=8)
    assert torch.isfinite(clean).all()
    for where in [(0, 0, 37), (0, 1, 37), (1, 3, 39)]:  # batch item, head (sharing a kv head), row
        poisoned = q.clone()
        poisoned[where][0] = float("nan")
        out = attention(poisoned, k, v, "causal", backend="tiled", tile=8)
        others = torch.ones_like(out, dtype=torch.bool)
        others[where] = False
        assert torch.equal(out[others], clean[others]), where
        assert out[where].isnan().all()


def test_tile_longer_than_the_sequence_allocates_nothing_more():
    q, k, v = make_qkv(1, 2, 2, 12, 12, 8, seed=2)
    # tile=16384 on 12 tokens took 2.9 s and 576 MB, tile=10**6 a 1 TB allocation error; now one tile of 12.
    same = attention(q, k, v, "causal", backend="tiled", tile=12)
    assert torch.equal(attention(q, k, v, "causal", backend="tiled", tile=10**9), same)
    assert torch.equal(attention_probs(q, k, "causal", tile=10**9), attention_probs(q, k, "causal", tile=12))
    assert count_tiles("causal", 12, 12, 8, tile=10**9) == count_tiles("causal", 12, 12, 8, tile=12)


def _plain_linear(x, w):
    return x @ w.T


@pytest.mark.parametrize(
    "b, hq, hkv, nq, nk, chunk",
    [
        (1, 9, 3, 50, 577, 256),  # a chat turn on SmolLM2's heads: one chunk against the whole cache
        (1, 9, 3, 577, 577, 256),  # a prompt: three chunks, each against the keys up to its end
        (2, 4, 2, 7, 19, 3),  # a batch, chunks of 3 (the last one short)
        (1, 2, 2, 1, 5, 4),  # one query, no grouping
        (1, 6, 1, 13, 13, 1),  # one query per chunk, every query head on one kv head
    ],
)
def test_causal_block_matches_float64_reference(b, hq, hkv, nq, nk, chunk):
    """anatomy.prefill's attention (grouped heads stacked as rows, queries in chunks) is the causal formula
    for a query block at the end of the keys, and returns (B, Nq, Hq, D)."""
    from anatomy.attention import _causal_block

    q, k, v = make_qkv(b, hq, hkv, nq, nk, 64 if nk > 100 else 8, seed=nq + nk)
    ref = float64_reference(q, k, v, "causal").transpose(1, 2)
    out = _causal_block(q, k, v, _plain_linear, chunk=chunk)
    assert out.shape == (b, nq, hq, q.shape[-1]) and out.is_contiguous()
    assert (out.double() - ref).abs().max() < 1e-5
    wrong = _causal_block(q, k, v, lambda x, w: x @ w.T * 1.01, chunk=chunk)  # the check can fail
    assert (wrong.double() - ref).abs().max() > 1e-5


def test_causal_block_nan_where_the_formula_puts_it():
    """A NaN query poisons its row only; a NaN key poisons the rows that see it and no row before it (its
    score is masked by masked_fill there, not by adding -inf, which would give NaN)."""
    from anatomy.attention import _causal_block

    q, k, v = make_qkv(1, 4, 2, 6, 10, 8, seed=3)
    clean = _causal_block(q, k, v, _plain_linear, chunk=4)
    q2 = q.clone()
    q2[0, 1, 2, 0] = float("nan")
    out = _causal_block(q2, k, v, _plain_linear, chunk=4)
    assert out[0, 2, 1].isnan().all() and torch.equal(out[0, :, [0, 2, 3]], clean[0, :, [0, 2, 3]])
    k2 = k.clone()
    k2[0, 0, 7, 0] = float("nan")  # key 7 = query row 3 (q_offset 4) and later, for heads 0 and 1
    out = _causal_block(q, k2, v, _plain_linear, chunk=4)
    assert out[0, 3:, :2].isnan().all() and torch.equal(out[0, :3], clean[0, :3])
    assert torch.equal(out[0, :, 2:], clean[0, :, 2:])
    # a NaN value: the rows that see it, and (weight 0 times NaN) the earlier rows of its chunk, as in the
    # dense formula; in chunks of one query, only the rows that see it; the other heads' rows stay exact
    v2 = v.clone()
    v2[0, 0, 7, 0] = float("nan")
    for chunk, first in ((4, 0), (1, 3)):
        out = _causal_block(q, k, v2, _plain_linear, chunk=chunk)
        assert out[0, 3:, :2, 0].isnan().all() and not out[0, :first, :2].isnan().any()
        assert torch.equal(out[0, :, 2:], clean[0, :, 2:])
