"""The tiled kernel's two-thread path: with two torch threads and no autograd, the row blocks of queries
are shared out between two Python threads, each with one torch thread. It must give exactly the one-thread
result (and the same tile counts), leave torch's thread setting as it found it, and pass on grad and
inference mode."""

from __future__ import annotations

import pytest
import torch

from anatomy import attention
from anatomy.kernels import tiled
from anatomy.masks import count_tiles, tile_map
from anatomy.timing import one_thread


def _qkv(b, hq, hkv, n, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, hq, n, d, generator=g) * 2,
        torch.randn(b, hkv, n, d, generator=g),
        torch.randn(b, hkv, n, d, generator=g),
    )


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def split_calls(monkeypatch):
    calls = []
    real = tiled._in_two_threads

    def spy(run):
        calls.append(run)
        return real(run)

    monkeypatch.setattr(tiled, "_in_two_threads", spy)
    return calls


@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("shape", [(1, 8, 8, 640), (2, 6, 3, 520), (1, 4, 1, 700)], ids=str)
def test_two_threads_give_the_one_thread_result_bit_for_bit(two_threads, split_calls, mask, shape):
    b, hq, hkv, n = shape
    q, k, v = _qkv(b, hq, hkv, n)
    kw = dict(q_offset=0, prefix_len=n // 3 if mask == "prefix" else None, tile=128, return_lse=True)
    stats, stats1 = {}, {}
    with torch.no_grad():
        out, lse = tiled.tiled_attention(q, k, v, mask, stats=stats, **kw)
    assert len(split_calls) == 1, "the two-thread path was not taken"
    assert torch.get_num_threads() == 2
    with one_thread(), torch.no_grad():
        out1, lse1 = tiled.tiled_attention(q, k, v, mask, stats=stats1, **kw)
    assert torch.equal(out, out1) and torch.equal(lse, lse1)
    assert stats == stats1 and stats["tiles"] > 0


def test_non_finite_keys_and_values_are_looked_for_once_per_call(two_threads, split_calls, monkeypatch):
    """The running-maximum path looks for non-finite keys and values (two float64 sums and a host sync) once
    per call: not once per thread of the two-thread path, nor once per row block that the unshifted path
    redoes; the unshifted path does not look when it redoes nothing. The result is unchanged."""
    looks = []
    real = tiled._nonfinite

    def spy(*args):
        looks.append(1)
        return real(*args)

    q, k, v = _qkv(1, 8, 8, 640)
    k[0, 2, 600] = float("nan")  # seen by the last row block only
    dirty = q.clone()
    dirty[0, 1, 5] = k[0, 1, 0] * 60  # overflows unshifted: row block 0 is redone
    dirty[0, 3, 300] = k[0, 3, 0] * 60  # row block 2 too
    kw = dict(q_offset=0, prefix_len=None, tile=128)
    with torch.no_grad():
        want_lse = tiled.tiled_attention(q, k, v, "causal", return_lse=True, **kw)
        want = tiled.tiled_attention(dirty, k, v, "causal", **kw)
        monkeypatch.setattr(tiled, "_nonfinite", spy)
        got_lse = tiled.tiled_attention(q, k, v, "causal", return_lse=True, **kw)  # two threads
        assert len(split_calls) == 3 and len(looks) == 1
        clean = tiled.tiled_attention(q[..., :512, :], k[..., :512, :], v[..., :512, :], "causal", **kw)
        assert len(looks) == 1  # unshifted, nothing redone: no look
        got = tiled.tiled_attention(dirty, k, v, "causal", **kw)
        assert len(looks) == 2  # row blocks 0, 2 and 4 (the NaN) redone, in two threads: one look
    for a, b in zip((*got_lse, got), (*want_lse, want)):  # bit for bit, NaN where the NaN key is seen
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert got[0, 2, 600:].isnan().all() and got[0, 2, :600].isfinite().all() and clean.isfinite().all()


def test_the_shares_balance_the_work():
    rows = tile_map("causal", 1024, 1024, tile=128, q_offset=0, prefix_len=None).tolist()
    a, b = tiled._two_shares([sum(kind != tiled.EMPTY for kind in row) for row in rows])
    assert sorted(a + b) == list(range(8))
    assert sum(i + 1 for i in a) == sum(i + 1 for i in b) == 18  # 36 tiles, 18 each


def test_small_inputs_and_autograd_stay_on_one_thread(two_threads, split_calls):
    q, k, v = _qkv(1, 8, 8, 640)
    attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], backend="tiled")  # too little work to split
    attention(q[:, :1, :256], k[:, :1, :256], v[:, :1, :256], backend="tiled")  # 3 tiles of 1 head
    q.requires_grad_(True)
    attention(q, k, v, backend="tiled").sum().backward()
    assert q.grad is not None and split_calls == []


def test_inference_mode_passes_to_the_threads(two_threads, split_calls):
    q, k, v = _qkv(1, 8, 8, 640)
    with torch.inference_mode():
        out = attention(q, k, v, backend="tiled")
    assert out.is_inference() and len(split_calls) == 1
    with torch.no_grad():
        assert torch.equal(attention(q, k, v, backend="tiled"), out)


def test_an_error_in_a_thread_is_raised_and_the_thread_setting_restored(two_threads, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom in a worker")

    monkeypatch.setattr(tiled, "_row_blocks", boom)
    q, k, v = _qkv(1, 8, 8, 640)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom in a worker"):
        attention(q, k, v, backend="tiled")
    assert torch.get_num_threads() == 2


def test_a_second_thread_in_a_split_call_runs_its_shares_itself(two_threads, split_calls, monkeypatch):
    """torch's thread setting is process-wide: while one Python thread is in a two-thread call (setting 1),
    another must not start its own (it would restore the 1 it read), so it runs both shares in turn."""
    q, k, v = _qkv(1, 8, 8, 640)
    with torch.no_grad():
        want = attention(q, k, v, backend="tiled")
        settings = []
        monkeypatch.setattr(torch, "set_num_threads", settings.append)
        assert tiled._SPLIT.acquire(blocking=False)  # as if another thread were in a split call
        try:
            got = attention(q, k, v, backend="tiled")
        finally:
            tiled._SPLIT.release()
            monkeypatch.undo()
    assert len(split_calls) == 2 and torch.equal(got, want) and settings == []
    assert torch.get_num_threads() == 2


def test_a_dispatch_mode_keeps_the_kernel_on_one_thread(two_threads, split_calls):
    """Dispatch modes are per thread: under FlopCounterMode the two threads' products would not be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = _qkv(1, 8, 8, 640)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        attention(q, k, v, backend="tiled")
    assert split_calls == [] and counter.get_total_flops() > 0
    with torch.no_grad(), one_thread(), FlopCounterMode(display=False) as one:
        attention(q, k, v, backend="tiled")
    assert counter.get_total_flops() == one.get_total_flops()


@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("shape", [(1, 4, 4, 300), (2, 6, 3, 260)], ids=str)
def test_without_autograd_the_result_is_the_autograd_paths_bit_for_bit(mask, shape):
    """Without autograd the kernel works in buffers reused across tiles and row blocks, adds a diagonal
    tile's mask to -m before the product instead of to the scores after it, and divides straight into the
    output; with autograd each step is out of place. The arithmetic is the same, so must be the bits (with
    ragged last tiles and grouped heads; one thread)."""
    b, hq, hkv, n = shape
    q, k, v = _qkv(b, hq, hkv, n)
    kw = dict(q_offset=0, prefix_len=n // 3 if mask == "prefix" else None, tile=64, return_lse=True)
    with one_thread():
        with torch.no_grad():
            out, lse = tiled.tiled_attention(q, k, v, mask, **kw)
        out_g, lse_g = tiled.tiled_attention(q.requires_grad_(True), k, v, mask, **kw)
    assert torch.equal(out, out_g.detach()) and torch.equal(lse, lse_g.detach())


def test_diagonal_tile_masks_are_shared_across_calls_and_never_written():
    tiled._tile_mask.cache_clear()
    q, k, v = _qkv(1, 2, 1, 512)
    with one_thread(), torch.no_grad():
        for _ in range(2):
            tiled.tiled_attention(q, k, v, "causal", q_offset=0, prefix_len=None, tile=128)
    info = tiled._tile_mask.cache_info()
    assert (info.misses, info.hits) == (1, 7)  # the 4 diagonal tiles of both calls: one mask
    hidden, bias = tiled._tile_mask("causal", 0, 128, 128, None, 2, torch.float32, torch.device("cpu"))
    above = torch.ones(128, 128, dtype=torch.bool).triu(1)
    assert torch.equal(hidden, above)
    assert torch.equal(bias, torch.zeros(256, 128).masked_fill_(above.repeat(2, 1), float("-inf")))
    # Queries at other positions (a block after a cache; prefixes) get masks of their own.
    with one_thread(), torch.no_grad():
        for mask, nq, p, tile in (
            ("causal", 200, None, 128),
            ("prefix", 512, 200, 128),
            ("prefix", 512, 300, 96),
        ):
            got = attention(q[:, :, -nq:], k, v, mask, prefix_len=p, backend="tiled", tile=tile)
            want = attention(q[:, :, -nq:], k, v, mask, prefix_len=p, backend="reference")
            torch.testing.assert_close(got, want)
        # A mask larger than MASK_CACHE_MAX (here one tile of the whole sequence) is built, not kept.
        kept = tiled._tile_mask.cache_info().currsize
        got = attention(q, k, v, "causal", backend="tiled", tile=512)
        assert 2 * 512 * 512 > tiled.MASK_CACHE_MAX and tiled._tile_mask.cache_info().currsize == kept
        torch.testing.assert_close(got, attention(q, k, v, "causal", backend="reference"))


def test_causal_tiles_computed_are_the_classifiers():
    """The tiles below and on the diagonal, and only those, at the benchmark's shape; the first of each
    row block sets its maximum, the others follow it."""
    q, k, v = _qkv(1, 8, 8, 1024)
    stats = {}
    with one_thread(), torch.no_grad():
        out = tiled.tiled_attention(q, k, v, "causal", q_offset=0, prefix_len=None, tile=128, stats=stats)
    c = count_tiles("causal", 1024, 1024, 64, tile=128)
    assert stats["tiles"] == c.tiles_full + c.tiles_partial == 36
    assert stats["later_tiles"] == 36 - 8
    torch.testing.assert_close(out, attention(q, k, v, "causal", backend="reference"))


def test_a_fake_tensor_trace_leaves_no_fake_tensor_in_the_caches():
    """Tracing the kernel under FakeTensorMode (as torch.compile / export do) must not cache its fake tile
    map or masks: a real call of the same shape afterwards would then fail (it did, before the caches
    were skipped under a dispatch mode)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from anatomy import attention
    from anatomy.kernels import tiled
    from anatomy.masks import _tile_map

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 200, 16) for _ in range(3))  # a shape no other test uses
    _tile_map.cache_clear()
    tiled._tile_mask.cache_clear()
    with torch.no_grad(), FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        try:  # the kernel reads tile counts as Python ints, which a fake trace may refuse; either way...
            tiled.tiled_attention(fq, fk, fv, "causal", q_offset=0, prefix_len=None, tile=128)
        except Exception:
            pass
    # ...nothing it made is kept, and the real call is right
    assert _tile_map.cache_info().currsize == 0 and tiled._tile_mask.cache_info().currsize == 0
    with torch.no_grad():
        out = attention(q, k, v, "causal", backend="tiled", tile=128)
        ref = attention(q, k, v, "causal", backend="reference")
    assert float((out - ref).abs().max()) < 1e-5


# ------------------------------------------------------------------------------------------------------
# NaN and inf in keys or values a row cannot see: they must not reach that row
# ------------------------------------------------------------------------------------------------------


def _definition(q, k, v, mask, prefix_len, key_padding_mask):
    """Causal attention as defined, in float64: each row's softmax over the keys it sees, and only those
    keys' values (a hidden key has no weight at all, not a weight 0 times its value: 0 x NaN is NaN)."""
    from anatomy.masks import visible

    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    out = torch.empty_like(q)
    n = q.shape[2]
    for b in range(q.shape[0]):
        for i in range(n):
            seen = visible(mask, torch.tensor(i), torch.arange(n), prefix_len)
            if key_padding_mask is not None:
                seen = seen & key_padding_mask[b]
            idx = seen.nonzero().squeeze(1)
            s = q[b, :, i : i + 1] @ k[b][:, idx].transpose(-1, -2) * q.shape[-1] ** -0.5
            out[b, :, i] = (torch.softmax(s, -1) @ v[b][:, idx])[:, 0]
    return out


def test_a_nan_in_a_future_key_stays_in_the_rows_that_see_it():
    """The example of the bug: N = 6, key 5 NaN. The mask was added to the scores (NaN + -inf = NaN), so
    every row of the diagonal tile came out NaN; the rows 0-4 that cannot see key 5 must be finite, as the
    float64 formula and SDPA give: exactly what the running-maximum path gives without the NaN (the
    unshifted path redoes those rows on it), within float32 rounding of the unshifted result."""
    q, k, v = _qkv(1, 2, 2, 6, d=8)
    k_nan = k.clone()
    k_nan[0, :, 5] = float("nan")
    with torch.no_grad():
        clean = tiled.tiled_attention(
            q, k, v, "causal", q_offset=0, prefix_len=None, tile=128, return_lse=True
        )[0]
        unshifted = tiled.tiled_attention(q, k, v, "causal", q_offset=0, prefix_len=None, tile=128)
        out = tiled.tiled_attention(q, k_nan, v, "causal", q_offset=0, prefix_len=None, tile=128)
        ref = attention(q.double(), k_nan.double(), v.double(), "causal", backend="reference")
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k_nan, v, is_causal=True)
    assert ref[0, :, :5].isfinite().all() and ref[0, :, 5].isnan().all() and sdpa[0, :, :5].isfinite().all()
    assert torch.equal(out[0, :, :5], clean[0, :, :5])
    torch.testing.assert_close(out[0, :, :5], unshifted[0, :, :5], rtol=1e-6, atol=1e-6)
    assert out[0, :, 5].isnan().all()


@pytest.mark.parametrize("which", ["key", "value"])
@pytest.mark.parametrize("mask", ["causal", "prefix"])
@pytest.mark.parametrize("tile", [4, 128])
@pytest.mark.parametrize(
    "path",
    ["unshifted", "lse", "grad", "padding", "bfloat16", "float64"],
)
def test_a_nan_or_inf_where_a_row_cannot_see_it_leaves_that_row_alone(which, mask, tile, path):
    """A NaN and an inf in keys or values that only later rows see (and under a padding mask, in keys
    that are padding), on every path of the kernel, grouped heads, row blocks of 4 rows and one of 13:
    the non-finite outputs are exactly where the formula over each row's own keys puts them, the others
    are that formula's values. For a value the formula is the definition (:func:`_definition`), not the
    dense reference: its softmax @ V multiplies the hidden key's weight 0 by the NaN and so makes every
    row NaN; a hidden key must not influence a row at all (as the definition of masked attention says)."""
    n, pl = 13, (4 if mask == "prefix" else None)
    q, k, v = _qkv(2, 4, 2, n, d=8, seed=3)
    bad = k if which == "key" else v
    bad[0, 1, 9, 3] = float("nan")
    bad[1, 0, 11, 0] = float("inf")
    kpm = None
    if path == "padding":
        kpm = torch.ones(2, n, dtype=torch.bool)
        kpm[0, 10] = kpm[1, 12] = False
        bad[0, 0, 10] = float("nan")  # a padding key: no row sees it
    want = _definition(q, k, v, mask, pl, kpm)
    dtype = {"bfloat16": torch.bfloat16, "float64": torch.float64}.get(path, torch.float32)
    grad = path == "grad"
    qq, kk, vv = (t.to(dtype).requires_grad_(grad) for t in (q, k, v))
    with torch.set_grad_enabled(grad):
        got = tiled.tiled_attention(
            qq, kk, vv, mask, q_offset=0, prefix_len=pl, tile=tile, key_padding_mask=kpm,
            return_lse=path == "lse",
        )  # fmt: skip
    got = (got[0] if path == "lse" else got).detach().double()
    seen = want.isfinite()
    assert not seen.all() and seen.any()
    assert torch.equal(got.isfinite(), seen)
    assert torch.equal(got.isnan(), want.isnan())
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert float((got[seen] - want[seen]).abs().max()) < tol


# ------------------------------------------------------------------------------------------------------
# The unshifted path (float32/float64 inference): no running maximum, rows it cannot vouch for redone
# ------------------------------------------------------------------------------------------------------


def _exact(q, k, v, mask, **kw):
    return attention(q.double(), k.double(), v.double(), mask, backend="reference", **kw)


@pytest.mark.parametrize("mask", ["causal", "bidirectional", "prefix"])
@pytest.mark.parametrize("shape", [(1, 4, 4, 300), (2, 6, 3, 260), (1, 8, 8, 1024)], ids=str)
def test_the_unshifted_path_matches_the_running_maximum_and_the_definition(mask, shape, monkeypatch):
    b, hq, hkv, n = shape
    q, k, v = _qkv(b, hq, hkv, n)
    kw = dict(q_offset=0, prefix_len=n // 3 if mask == "prefix" else None, tile=128)
    with one_thread(), torch.no_grad():
        stats = {}
        fast = tiled.tiled_attention(q, k, v, mask, stats=stats, **kw)
        monkeypatch.setattr(tiled, "UNSHIFTED_DTYPES", ())  # the running-maximum path, for comparison
        shifted = tiled.tiled_attention(q, k, v, mask, **kw)
    assert stats["rescaled"] == 0  # no row needed the running maximum: the unshifted path ran
    assert not torch.equal(fast, shifted)  # a different rounding (so the test can tell the paths apart)
    exact = _exact(q, k, v, mask, prefix_len=kw["prefix_len"])
    err, err_shifted = ((x.double() - exact).abs().max().item() for x in (fast, shifted))
    assert err <= max(2 * err_shifted, 1e-6), (err, err_shifted)


def test_rows_out_of_the_unshifted_range_are_redone_and_only_those(monkeypatch):
    """Rows whose scores are all far above 0 (2 ** s would overflow) or far below (it would underflow) in
    base 2, or a row with NaN, are redone with the running maximum; every other row keeps the bits of a
    run without them."""
    q, k, v = _qkv(2, 4, 2, 520)
    kw = dict(q_offset=0, prefix_len=None, tile=128)
    dirty = q.clone()
    dirty[0, 1, 5] = k[0, 0, 0] * 60  # this row's largest score ~ +60 x |k|^2 / 8 in base 2: overflows
    dirty[0, 1, 300] = -k[0, 0, :301].sum(0) * 8  # scores far below 0 for the keys this row sees
    dirty[1, 3, 400, 7] = float("nan")
    redone = torch.zeros(2, 4, 520, dtype=torch.bool)
    redone[0, 1, 5] = redone[0, 1, 300] = redone[1, 3, 400] = True
    redos, real = [], tiled._row_blocks

    def spy(*args, fast=True, **kw):
        redos.extend([] if fast else args[6])  # the row blocks redone with the running maximum
        return real(*args, fast=fast, **kw)

    monkeypatch.setattr(tiled, "_row_blocks", spy)
    with one_thread(), torch.no_grad():
        clean = tiled.tiled_attention(q, k, v, "causal", **kw)
        assert redos == []
        out = tiled.tiled_attention(dirty, k, v, "causal", **kw)
    assert sorted(redos) == [0, 2, 3]  # the row blocks of rows 5, 300 and 400
    assert torch.equal(out[~redone], clean[~redone])
    assert out[1, 3, 400].isnan().all()
    exact = _exact(dirty, k, v, "causal")
    for b, h, i in ((0, 1, 5), (0, 1, 300)):
        torch.testing.assert_close(out[b, h, i].double(), exact[b, h, i], rtol=1e-5, atol=1e-5)
    sums, ones = torch.tensor([[1.0], [2.0**65], [2.0**-65], [float("nan")]]), torch.ones(4, 3)
    assert tiled._unvouched(sums, ones, 1.0).tolist() == [False, True, True, True]
    outputs = torch.tensor([[1.0, float("inf")], [1.0, 2.0], [0.5, -0.25]])
    assert tiled._unvouched(torch.ones(3, 1), outputs, 0.75).tolist() == [True, False, True]  # inf; scale
    # a NaN output with a normal sum is caught (amax passes NaN on); large finite outputs whose total would
    # overflow are not redone for nothing
    outputs = torch.tensor([[1.0, float("nan")], [3e38, 3e38], [1.0, 1.0]])
    assert tiled._unvouched(torch.ones(3, 1), outputs, 0.5).tolist() == [True, False, False]


def test_rows_of_small_sums_and_small_values_keep_their_digits():
    """Every score near -60 in base 2 (a sum ~2 ** -55, within 2 ** 64 of 1) and values ~1e-25 (normal
    float32 numbers): unshifted, the products 2 ** s * v fall below float32's smallest normal number and lose
    their digits (1% error when only the sum was checked); such rows (largest |output| before the division
    below N x float32's smallest normal number) are redone with the running maximum, whose error they then
    have."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 256, 16, generator=g), torch.randn(1, 1, 256, 16, generator=g)
    q[..., 0], k[..., 0] = 10.0, -17.0  # scores (base 2) between about -69 and -55
    v = torch.randn(1, 1, 256, 16, generator=g) * 1e-25
    kw = dict(q_offset=0, prefix_len=None, tile=64)
    with one_thread(), torch.no_grad():
        fast = tiled.tiled_attention(q, k, v, "causal", **kw)
        shifted, _ = tiled.tiled_attention(q, k, v, "causal", return_lse=True, **kw)
    exact = _exact(q, k, v, "causal")
    scale = exact.abs().max().item()
    err, err_shifted = ((x.double() - exact).abs().max().item() / scale for x in (fast, shifted))
    assert err_shifted < 1e-5 and err <= 2 * err_shifted, (err, err_shifted)


def test_the_unshifted_path_is_taken_only_where_it_applies(monkeypatch):
    """float32/float64 without autograd, log-sum-exp or padding: yes; otherwise the running maximum."""
    taken = []
    real = tiled._unvouched

    def spy(row_sum, acc, floor):
        taken.append(row_sum.dtype)
        return real(row_sum, acc, floor)

    monkeypatch.setattr(tiled, "_unvouched", spy)
    q, k, v = _qkv(1, 2, 2, 200)
    kw = dict(q_offset=0, prefix_len=None, tile=64)
    with one_thread(), torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            tiled.tiled_attention(q.to(dtype), k.to(dtype), v.to(dtype), "causal", **kw)
        assert taken == [torch.float32] * 4 + [torch.float64] * 4  # one check per row block
        taken.clear()
        tiled.tiled_attention(q.half(), k.half(), v.half(), "causal", **kw)
        tiled.tiled_attention(q, k, v, "causal", return_lse=True, **kw)
        pad = torch.ones(1, 200, dtype=torch.bool)
        tiled.tiled_attention(q, k, v, "causal", key_padding_mask=pad, **kw)
    tiled.tiled_attention(q.requires_grad_(True), k, v, "causal", **kw)
    assert taken == []


def test_buffers_are_left_to_the_next_call_and_work_in_and_out_of_inference_mode():
    """A call without autograd leaves its working buffers to the next call of the same shape (their memory
    is not faulted in again); they are plain tensors, so a set made under inference mode serves a call
    under no_grad (an inference tensor would refuse the in-place writes there), with the same results."""
    q, k, v = _qkv(1, 4, 2, 300)
    kw = dict(q_offset=0, prefix_len=None, tile=128)
    tiled._POOL.clear()
    with one_thread():
        with torch.inference_mode():
            first = tiled.tiled_attention(q, k, v, "causal", **kw)
        assert len(tiled._POOL) == 1
        kept = tiled._POOL[0]
        assert not kept.s.is_inference()
        with torch.no_grad():
            again = tiled.tiled_attention(q, k, v, "causal", **kw)
        assert tiled._POOL == [kept]  # taken and given back: no new set
        with torch.no_grad():
            tiled.tiled_attention(q[:, :, :200], k[:, :, :200], v[:, :, :200], "causal", **kw)
            assert tiled._POOL == [kept]  # another N, the same buffers
            tiled.tiled_attention(q[:, :2], k[:, :1], v[:, :1], "causal", **kw)
        assert len(tiled._POOL) == 2 and tiled._POOL[0] is kept  # other heads: a set of its own, kept too
    assert torch.equal(first, again)
    with one_thread(), torch.no_grad():  # an output is never a pooled buffer: a later call leaves it alone
        kept_out = tiled.tiled_attention(q, k, v, "causal", **kw)
        before = kept_out.clone()
        tiled.tiled_attention(q * 2, v, k, "causal", **kw)
    assert torch.equal(kept_out, before)
    one, two = (tiled._Buffers.take(q, 4, 2, 128, 64) for _ in range(2))  # taken twice: two distinct sets
    ptrs = [{t.data_ptr() for t in (*b.q, b.s, b.sum, *b.row_sums, *b.accs)} for b in (one, two)]
    assert not ptrs[0] & ptrs[1]
    big = tiled._Buffers(q, 10**3, 1, 128, 64, 1)  # a set above POOL_MAX_BYTES is not kept
    assert big.nbytes > tiled.POOL_MAX_BYTES
    big.give_back()
    assert big not in tiled._POOL
