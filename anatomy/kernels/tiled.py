"""A FlashAttention-style kernel in plain PyTorch: online softmax over key tiles.

For each block of query rows we walk the key tiles left to right, keeping a running maximum ``m``, a
running normaliser ``l`` and an unnormalised output ``acc`` (Milakov & Gimelshein 2018; Dao et al. 2022).
The tile map from :mod:`anatomy.masks` says which tiles to visit: EMPTY tiles (above the causal diagonal)
are never touched, FULL tiles need no mask, PARTIAL tiles apply the mask predicate element by element.

Grouped-query attention costs nothing extra: the G query heads that share one key/value head are stacked
as extra rows of one matmul against that head's keys.

What makes it fast on a CPU, in the order described below (none of it changes the result beyond float32
rounding): exponentials in base 2 and, on the paths that keep a running maximum, a lazily raised maximum
(the two points that follow); in float32/float64 inference, a path with no running maximum at all, which
redoes with one the rows it cannot vouch for; row blocks walked four at a time (:data:`ROW_GROUP`); and,
without autograd, score and sum buffers reused from tile to tile and, with two or more torch threads, the
row blocks shared out between two Python threads.

* The exponentials are taken in base 2, as FlashAttention-2 and the Triton kernel do: the queries are
  scaled by ``log2(e) / sqrt(d)``, so ``2 ** s`` equals ``e ** (q.k / sqrt(d))``. PyTorch's CPU ``exp2``
  was about twice as fast as its ``exp`` here (the causal kernel chapter measures it) and stays fast for
  ``-inf``, where ``exp`` takes a slow path, so masked scores can simply be ``-inf``.
* Lazy rescaling: once a row block has a running maximum ``m``, the next tile's scores are computed
  relative to it inside the matmul (``baddbmm`` with ``-m`` as the added term), and ``m`` is raised, with
  the rescaling of ``l`` and ``acc``, only when some row's new scores exceed it by more than
  :data:`RESCALE_THRESHOLD` (in base 2). Until then the exponentials are at most
  ``2 ** RESCALE_THRESHOLD`` instead of 1, which float32 holds just as exactly; the output is the same
  ratio ``acc / l`` either way. Most tiles thus skip the subtraction pass and the rescaling operations.
  The test for a rise reads the tile's row sums of the exponentials, which ``l`` needs anyway: no
  exponential exceeds its row's sum, so sums at most ``2 ** RESCALE_THRESHOLD`` prove that no score rose
  past the threshold; for a tile with a larger sum the largest exponential of each row decides, and only a
  tile where one reaches ``2 ** RESCALE_THRESHOLD`` is redone with the exact row-by-row test. That saves
  a maximum pass over most later tiles (measured 1.5-2.6% of the time at N = 1024-4096, 1 thread, random
  scores; same output bit for bit; at worst, every sum large, ~3% slower than one maximum pass per tile).

In float32 (or float64) inference, without the log-sum-exp and without a padding mask, the kernel goes
further and keeps no running maximum at all. The maximum only keeps the exponentials in range, and the
output ``acc / l`` does not depend on it; floating point is relative, so ``2 ** s`` is as exact near
``2 ** 40`` as near 1, and float32 holds ``2 ** s`` for -126 <= s < 128. So the scores are exponentiated
as they are: a tile costs its product, ``exp2``, a row sum, the sum's accumulation and the second product,
with no maximum, no subtraction and no host sync (``.item()``). Each row block is then checked row by row
(:func:`_unvouched`): a row whose sum ``l`` lies in [2 ** -64, 2 ** 64] had no exponential above
``2 ** 64`` (none exceeds ``l``), so none overflowed, and its largest is at least ``l / N >= 2 ** -64 / N``,
so in float32 every key within a factor ``2 ** -(62 - log2 N)`` of it (``2 ** -50`` at N = 4096) was a
normal float; the keys below that add less than ``N * 2 ** -(62 - log2 N)`` of the row's largest weight
(``2 ** -38`` at N = 4096), below float32 rounding. Small exponentials times small values can still fall below
the smallest normal number (``tiny``; scores all near -60 and values ~1e-25 lost 1% that way): each such
product is off by at most half a subnormal step, ``N`` of them by ``N * tiny * eps / 2``, which is float
rounding next to a row whose largest unnormalised output ``|acc|`` is at least ``N * tiny``; so that is
checked too. Its output must be finite too (huge values can overflow where the weights do not). The
rows that fail (all scores far above or below 0 in base 2, or a NaN or infinite input) are redone with
the running maximum, and only those rows replaced, so every row's result still depends on that row's
inputs only. It changes the output within float32 rounding (no ``s - m`` is rounded);
measured at N = 4096, causal, 1 thread, CPU clock, under load 6: 5% less time than with the lazy maximum.
The autograd path, the log-sum-exp (``attention_probs``), half precision and padding masks keep the
running maximum.

Row blocks are walked four at a time (:data:`ROW_GROUP`), with the key tiles as the outer loop, so that
each key/value tile is read from memory once for the four and is still in the cache for the others; each
row block's own operations and their order are unchanged (same output bit for bit). Measured at N = 4096,
causal, 1 thread, CPU clock, under load 5-10 (other jobs on both cores): tiled/SDPA 1.048 / 1.038 / 1.031
/ 1.028 for groups of 1 / 2 / 3 / 4 with the running maximum, 1.078 / 1.039 for 2 / 4 without it.

Without autograd, every tile's scores and row sums are written into two buffers that the next tile reuses
(``out=``): no tile allocates memory (measured 2-6% less time for causal attention at N = 1024-4096, 1
thread). A later diagonal tile's mask is added to ``-m`` in the score buffer, and the product accumulates
onto it (``baddbmm_``): one pass over the tile fewer than adding the mask to the scores afterwards. (A
NaN or inf in a key or value that a row cannot see must not reach that row, but NaN + -inf is NaN and 0 x
NaN too: see :func:`_nonfinite` for how such calls are treated, at the cost of two sums per call. This holds
for the forward output; under autograd the gradients of rows that cannot see such a key or value can still
be NaN (0 x NaN in the backward products), as with the reference formula. Finite scores that overflow to
inf are not covered.) Each
row block's scaled queries, running sums and output also live in buffers taken once per call, and the
result is divided straight into the output's rows. A call leaves its buffers to the next call of the same
shape (:class:`_Buffers`): allocated afresh, they came back from the C library as new pages, and the page
faults took ~2 ms of a 14 ms causal call at N = 1024. Per-row-block and per-call costs are paid by causal
and full attention alike, so they pull causal/full above the count of tiles, the more so the fewer tiles
there are per row block (small N). All of this gives the autograd path's output bit for bit
(``tests/test_kernels.py``).

With two or more torch threads (and no autograd), the row blocks are shared out between two Python
threads, in two shares of equal work (tiles to compute), each thread with one torch thread: one tile's
products are too small for PyTorch to split over two cores with any gain (SDPA instead parallelises over
heads and query blocks), but row blocks are independent and torch releases the GIL inside every
operation. Same output bit for bit as one thread. Measured at N = 1024 / 2048 / 4096, causal, on a busy
2-core machine (load ~8): the two threads together use 1.11 / 1.02 / 1.03x the CPU time of the one-thread
kernel, the busier of them 0.49 / 0.49 / 0.51x, so on an idle machine the call takes about half the time;
with no core idle, wall-clock time paired against the one-thread path was 0.84-1.04x.

The matrix products take most of the time: at N = 4096, causal, 1 thread, the two products per tile alone
take 0.94-0.97x SDPA's whole time. Tried here and not kept, because they did not measure faster: key
chunks of 2 or 4 full tiles per matrix product (0-5% slower; likely because the 8 heads' 128 x 512 score
blocks, 2 MB, exceed the core's 1 MB L2 cache), tile-major copies of K and V, and contiguous copies of
the transposed key tiles (both within the noise), a column of ones in V to get the row sums from the second
product (a 65-wide product costs more than the sum).

Causal / full stays above the tile count (T + 1) / 2T at N = 1024 (0.573-0.598 against 0.5625, 1 thread):
the tiles' own operations alone give 0.573 (a diagonal tile is its key/value tile's first, cache-cold read
in its group of row blocks: ~435 against ~408 us of CPU), the per-row-block end 0.583. Tried against that
and not kept, measured alternated in one process with the CPU clock (50-150 pairs, noise +-0.7%): the
scale folded into the score product (``baddbmm``'s ``alpha``, the queries as a view: 1% slower); the
diagonal tiles by a plain product and ``tril_`` on the exponentials instead of the -inf term (within the
noise); each row block finished right after its last tile, with one row check per call (1-3% slower); the
row check's largest |output| by ``vector_norm(inf)`` or ``aminmax(dim)`` instead of ``abs().amax()`` (254
and 112 against 11 us); accumulating straight into the output's rows (a strided output makes the product
slower, 197 against 175 us).
"""

from __future__ import annotations

import functools
import math
import threading

import torch

from anatomy.masks import EMPTY, PARTIAL, tile_map, visible

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2
RESCALE_THRESHOLD = 8.0  # in base 2: exponentials stay <= 2**8 = 256 between rescalings
MASK_CACHE_MAX = 2**17  # masks of at most this many scores (G heads x 128 x 128 for G <= 8) are kept
UNSHIFTED_DTYPES = (torch.float32, torch.float64)  # dtypes whose range lets 2 ** score go unshifted
UNSHIFTED_RANGE = 2.0**64  # a row's sum of 2 ** score within [1 / this, this] is vouched for
ROW_GROUP = 4  # row blocks walked together, key tile by key tile (each K/V tile read once for all)
POOL_SIZE = 2  # buffer sets kept from one call to the next (one per thread of the two-thread path)
POOL_MAX_BYTES = 2**26  # larger sets (64 MiB: large batches) are not kept


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: str,
    *,
    q_offset: int,
    prefix_len: int | None,
    tile: int,
    key_padding_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    stats: dict | None = None,
):
    """Tiled attention; q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D) -> out (B, Hq, Nq, D) [, lse (B, Hq, Nq)].

    Arguments are checked as ``anatomy.attention`` checks them. If ``stats`` is a dict, it receives
    ``"tiles"`` (tiles computed), ``"later_tiles"`` (those after the first of their row block, where a
    rescaling can happen) and ``"rescaled"`` (those where the running maximum was raised and the running
    sums rescaled; under a padding mask every later tile is).
    """
    from anatomy.attention import _check_inputs  # noqa: PLC0415 (anatomy.attention imports this module)

    q_offset = _check_inputs(q, k, v, mask, prefix_len, q_offset, "tiled", tile, key_padding_mask)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    return _tiled_attention(
        q, k, v, mask, q_offset=q_offset, prefix_len=prefix_len, tile=tile,
        key_padding_mask=key_padding_mask, return_lse=return_lse, stats=stats,
    )  # fmt: skip


def _tiled_attention(
    q, k, v, mask, *, q_offset, prefix_len, tile, key_padding_mask=None, return_lse=False, stats=None
):
    """:func:`tiled_attention` on arguments already checked."""
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict (or None), got {type(stats).__name__}")
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    # A tile longer than the sequence is the whole sequence: the same single tile, no tile^2 allocation.
    tile = min(tile, max(Nq, Nk))
    tmap = tile_map(mask, Nq, Nk, tile=tile, q_offset=q_offset, prefix_len=prefix_len)
    # Without autograd the running state is updated in place (no temporaries); with it, out of place.
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    kt = k.reshape(B * Hkv, Nk, D).transpose(1, 2)  # (B*Hkv, D, Nk)
    vs = v.reshape(B * Hkv, Nk, D)
    out = q.new_empty(B * Hkv, G, Nq, D)
    lse = q.new_empty(B * Hkv, G, Nq) if return_lse else None
    pad_hidden = None
    if key_padding_mask is not None:
        # Padding can hide keys inside any tile, so every visited tile is masked.
        tmap = torch.where(tmap == EMPTY, tmap, torch.full_like(tmap, PARTIAL))
        pad_hidden = ~key_padding_mask.repeat_interleave(Hkv, 0)[:, None, None, :]  # (B*Hkv, 1, 1, Nk)
    rows = tmap.tolist()  # plain Python ints: no tensor ops in the tile bookkeeping
    work = [sum(kind != EMPTY for kind in row) for row in rows]  # tiles to compute, per row block
    on_cpu = q.device.type == "cpu"  # a GPU runs its own threads
    blocks = _two_shares(work) if on_cpu and not grad and _worth_two_threads(work, B * Hq, tile, D) else None
    counts = [[0, 0, 0], [0, 0, 0]]
    nonfinite = _NonFinite(kt, vs, tile)  # looked for once per call, and only if some path needs it

    def run(share):  # the kernel on some of the row blocks (each writes its own rows of out and lse)
        _row_blocks(q, kt, vs, out, lse, rows, blocks[share] if blocks else range(len(rows)), mask, q_offset,
                    prefix_len, tile, grad, pad_hidden, counts[share], nonfinite=nonfinite)  # fmt: skip

    if blocks:
        _in_two_threads(run)
    else:
        run(0)
    if stats is not None:
        n_tiles, n_later, n_rescaled = (a + b for a, b in zip(*counts))
        stats.update(tiles=n_tiles, later_tiles=n_later, rescaled=n_rescaled)
    out = out.view(B, Hq, Nq, D)
    return (out, lse.view(B, Hq, Nq)) if return_lse else out


def _row_blocks(
    q, kt, vs, out, lse, tmap, blocks, mask, q_offset, prefix_len, tile, grad, pad_hidden, counts, fast=True,
    nonfinite=None,
):  # fmt: skip
    """The kernel proper: row blocks ``blocks`` of queries, each against its visible key tiles, left to right.

    q (B, Hq, Nq, D) as given, kt (BH, D, Nk), vs (BH, Nk, D); writes those rows of out (BH, G, Nq, D) and
    lse. counts receives [tiles computed, tiles after the first of their row block, tiles rescaled].

    The row blocks are taken :data:`ROW_GROUP` at a time, and within a group the key tiles are the outer
    loop: each key/value tile is read from memory once for the group's row blocks that see it and is still
    in the cache for the next. Every row block's own sequence of operations is unchanged (its tiles left
    to right, its own running state), so this only reorders independent work: same output bit for bit.

    In float32/float64 inference without the log-sum-exp or a padding mask (and ``fast``), the row blocks
    take the unshifted arithmetic of the module docstring: no running maximum; the rows it cannot vouch for
    (:func:`_unvouched`) are redone with one, and only those rows replaced.

    ``nonfinite`` (the call's :class:`_NonFinite`) says which key tiles hold a non-finite key or value; the
    paths that need it share one per call (both threads, and the row blocks redone).
    """
    B, Hq, Nq, D = q.shape
    BH, Nk = vs.shape[0], vs.shape[1]
    G = Hq * B // BH
    scale = LOG2E * D**-0.5  # scores in base 2
    padded = pad_hidden is not None
    unshifted = fast and not grad and not padded and lse is None and q.dtype in UNSHIFTED_DTYPES
    n_tiles = n_later = n_rescaled = 0
    k_tiles, v_tiles = kt.split(tile, dim=2), vs.split(tile, dim=1)  # views, sliced once
    # A NaN or inf in a key or value that a row cannot see must not reach that row. The mask is added to the
    # scores (inside the product, no extra pass), but NaN + -inf is NaN; and a hidden key's weight 0 times
    # a NaN value is NaN in the second product. The unshifted path needs no check: a row that came out NaN
    # is redone on the running-maximum path. That path looks once per call (two sums, one sync) for
    # non-finite keys and values, and only the diagonal tiles holding one are treated apart
    # (:func:`_nonfinite`): their hidden scores set to -inf, their non-finite values taken out of the product.
    bad_k = bad_v = None
    if not unshifted and any(kind == PARTIAL for row in tmap for kind in row):
        bad_k, bad_v = (nonfinite if nonfinite is not None else _NonFinite(kt, vs, tile)).get()
    # Without autograd, each row block's scaled queries, running sums and output (one set per row block of
    # a group), and every tile's scores and row sums, go into buffers taken once per call (a ragged last
    # tile gets its own): no memory is allocated per tile, and the few buffers stay in the cache. The call
    # leaves them to the next call of the same shape (:meth:`_Buffers.take`).
    bufs = None if grad else _Buffers.take(q, BH, G, tile, D, ROW_GROUP)
    blocks = list(blocks)
    for g0 in range(0, len(blocks), ROW_GROUP):
        group = []
        for slot, i in enumerate(blocks[g0 : g0 + ROW_GROUP]):
            b = _Block(i, tile, Nq, bufs is not None)
            # The block's queries, scaled, with the G heads of a group stacked as rows: (BH, G * rows, D).
            qbuf = bufs.q[slot] if b.full_rows else None
            b.q_i = torch.mul(q[:, :, b.q0 : b.q1], scale, out=qbuf).reshape(BH, G * b.rows, D)
            b.bufs = bufs.slot(slot) if b.full_rows else None
            group.append(b)
        for j in range(len(k_tiles)):
            for b in group:
                kind = tmap[b.i][j]
                if kind == EMPTY:
                    continue  # above the diagonal: never touched
                q0, rows, q_i, m, neg_m = b.q0, b.rows, b.q_i, b.m, b.neg_m
                row_sum, acc = b.row_sum, b.acc
                k0, k1 = j * tile, min((j + 1) * tile, Nk)
                k_j, v_j = k_tiles[j], v_tiles[j]
                partial = kind == PARTIAL
                n_tiles += 1
                n_later += acc is not None
                whole = b.full_rows and k1 - k0 == tile
                s_out, sum_out = (bufs.s, bufs.sum) if whole else (None, None)
                if partial:
                    # A tile's mask depends on where its rows sit relative to its columns (and to the
                    # prefix): the tiles on the diagonal share one, kept across calls unless it is large.
                    cols, rel = k1 - k0, q0 + q_offset - k0
                    pre = None if prefix_len is None else min(max(prefix_len - k0, 0), cols)
                    keep = G * rows * cols <= MASK_CACHE_MAX and not torch._C._len_torch_dispatch_stack()
                    build = _tile_mask if keep else _tile_mask.__wrapped__  # a fake-tensor trace keeps none
                    hidden, bias = build(mask, rel, rows, cols, pre, G, q.dtype, q.device)
                    if bad_k is not None and j in bad_k:
                        bias = None  # a non-finite key here: the hidden scores are set, not added to
                if unshifted:
                    # 2 ** score itself, no maximum subtracted: four operations per tile, no sync.
                    s = (
                        torch.baddbmm(bias, q_i, k_j, out=s_out)
                        if partial
                        else torch.bmm(q_i, k_j, out=s_out)
                    )
                    p = s.exp2_()
                    if acc is None:
                        bb = b.bufs
                        b.row_sum = torch.sum(p, -1, keepdim=True, out=bb.row_sum if bb else None)
                        b.acc = torch.bmm(p, v_j, out=bb.acc if bb else None)
                    else:
                        row_sum.add_(torch.sum(p, -1, keepdim=True, out=sum_out))
                        acc.baddbmm_(p, v_j)
                    continue
                if m is not None and not padded:
                    # Scores relative to the running maximum, the subtraction done inside the matmul. On a
                    # diagonal tile the mask is a 0 / -inf term as well: without autograd it is added to -m
                    # first, in the score buffer, and the product accumulates onto that (one pass over the
                    # tile fewer, same result bit for bit); with autograd it is added to the scores.
                    if partial and not grad and bias is not None:
                        s = torch.add(neg_m, bias, out=s_out).baddbmm_(q_i, k_j)
                    else:
                        s = torch.baddbmm(neg_m, q_i, k_j, out=s_out)
                        s = _hide(s, bias, hidden, BH, G, rows) if partial else s
                    p = s.exp2_()
                    p_sum = torch.sum(p, -1, keepdim=True, out=sum_out)
                    # The check for a rise reads the row sums, which the kernel needs anyway, instead of
                    # taking a maximum over the tile: no exponential exceeds its row's sum, so if no sum
                    # exceeds 2 ** RESCALE_THRESHOLD, no score rose past the threshold (measured: 1.5-2.6%
                    # less time).
                    top = (p_sum.detach() if grad else p_sum).max().item()  # NaN if some row holds NaN
                    # A large sum alone is not a rise (many keys can each score a little above the
                    # maximum): then the largest exponential decides, and only a tile where some row's
                    # reaches the threshold is redone with the exact row-by-row test below (2.0 ** 8 is
                    # exact and exp2() is monotone, so no row that rose past the threshold is missed).
                    if not top <= 2.0**RESCALE_THRESHOLD and bool(
                        ((p.detach() if grad else p).amax(-1) >= 2.0**RESCALE_THRESHOLD).any()
                    ):
                        s = torch.baddbmm(neg_m, q_i, k_j, out=s_out)
                        s = _hide(s, bias, hidden, BH, G, rows) if partial else s
                        # The maximum only keeps exp2() in range; the result does not depend on it: no
                        # gradient.
                        rise = (s.detach() if grad else s).amax(-1, keepdim=True)
                        big = rise > RESCALE_THRESHOLD
                        if bool(big.any()):
                            # Only the rows that rose past the threshold are raised (a NaN row never is);
                            # the others keep their maximum exactly (a shift by +0), so every row's result
                            # depends on that row's inputs only, whatever the other rows, batch items and
                            # heads hold.
                            n_rescaled += 1
                            rise = torch.where(big, rise, 0.0)
                            s = s.sub_(rise)
                            # rescales what was accumulated under the old maximum
                            row_sum, acc = _rescale(row_sum, acc, torch.exp2(-rise), grad)
                            m = m + rise
                            neg_m = -m
                        p = s.exp2_()
                        p_sum = torch.sum(p, -1, keepdim=True, out=sum_out)
                else:
                    # The first tile of a row block (or any tile under a padding mask): maximum of its own.
                    if partial and not padded and bias is not None:
                        # the mask as a 0 / -inf term of the matmul
                        s = torch.baddbmm(bias, q_i, k_j, out=s_out)
                    else:
                        s = torch.bmm(q_i, k_j, out=s_out)  # (BH, G*rows, cols) scores of this tile
                        if partial:
                            hidden = hidden | pad_hidden[..., k0:k1] if padded else hidden
                            s.view(BH, G, rows, k1 - k0).masked_fill_(hidden, float("-inf"))
                    m_tile = (s.detach() if grad else s).amax(-1, keepdim=True)
                    m_new = m_tile if m is None else torch.maximum(m, m_tile)
                    if padded:
                        # Only padding can leave a row without any visible key so far (key 0 is always
                        # visible otherwise, and tiles are visited left to right); keep exp2() finite for
                        # such rows.
                        m_new = m_new.masked_fill(m_new == float("-inf"), 0.0)
                    p = s.sub_(m_new).exp2_()  # (BH, G*rows, cols); exp2(-inf) = 0 for hidden keys
                    p_sum = torch.sum(p, -1, keepdim=True, out=sum_out)
                    if m is not None:
                        n_rescaled += 1
                        row_sum, acc = _rescale(row_sum, acc, torch.exp2(m - m_new), grad)
                    m, neg_m = m_new, -m_new
                extra = None
                if partial and bad_v is not None and j in bad_v[1]:
                    v_j, extra = _hidden_values_out(p, v_j, bad_v[0][:, k0:k1], hidden, BH, G, rows)
                b.row_sum, b.acc = _accumulate(row_sum, acc, p, p_sum, v_j, grad, b.bufs)
                if extra is not None:
                    b.acc = b.acc + extra if grad else b.acc.add_(extra)
                b.m, b.neg_m = m, neg_m
        for b in group:
            q0, q1, rows = b.q0, b.q1, b.rows
            if unshifted:
                torch.div(b.acc.view(BH, G, rows, D), b.row_sum.view(BH, G, rows, 1), out=out[:, :, q0:q1])
                bad = _unvouched(b.row_sum, b.acc, Nk * torch.finfo(q.dtype).tiny)
                if bad is not None:  # those rows (and only those) again, with the running maximum
                    redo, redo_counts = torch.empty_like(out), [0, 0, 0]
                    _row_blocks(q, kt, vs, redo, None, tmap, [b.i], mask, q_offset, prefix_len, tile, grad,
                                pad_hidden, redo_counts, fast=False, nonfinite=nonfinite)  # fmt: skip
                    bad = bad.view(BH, G, rows)
                    out[:, :, q0:q1][bad] = redo[:, :, q0:q1][bad]
                    n_rescaled += redo_counts[2]
                continue
            if grad:
                out[:, :, q0:q1] = (b.acc / b.row_sum).view(BH, G, rows, D)
            else:  # straight into the output's rows
                torch.div(b.acc.view(BH, G, rows, D), b.row_sum.view(BH, G, rows, 1), out=out[:, :, q0:q1])
            if lse is not None:
                lse[:, :, q0:q1] = ((b.m + torch.log2(b.row_sum)) * LN2).view(BH, G, rows)
    counts[:] = n_tiles, n_later, n_rescaled
    if bufs is not None:
        bufs.give_back()


def _unvouched(row_sum, acc, floor):
    """The rows (BH, G * rows) of a row block whose unshifted sums or outputs cannot be vouched for, or None:
    a sum outside [1 / UNSHIFTED_RANGE, UNSHIFTED_RANGE] (or NaN), an output row that is not finite, or one
    whose largest unnormalised |output| is below ``floor`` (N keys x the dtype's smallest normal number:
    below it, products that underflowed could show; see the module docstring). One host sync when every
    row passes (the smallest and largest sum, and the smallest and largest row scale)."""
    lo, hi = torch.aminmax(row_sum)
    scale = acc.abs().amax(-1)  # each row's largest |output| before the division: NaN or inf if one is
    small, big = torch.aminmax(scale)
    lo, hi, small, big = torch.stack((lo, hi, small, big)).tolist()  # NaN fails a test below
    if 1 / UNSHIFTED_RANGE <= lo and hi <= UNSHIFTED_RANGE and small >= floor and math.isfinite(big):
        return None
    ok = (row_sum >= 1 / UNSHIFTED_RANGE) & (row_sum <= UNSHIFTED_RANGE)  # False for NaN
    ok &= (scale.isfinite() & (scale >= floor)).unsqueeze(-1)
    return None if bool(ok.all()) else ~ok.squeeze(-1)


class _Block:
    """One row block's place and running state (maximum, sums, output) while its group is walked."""

    __slots__ = ("i", "q0", "q1", "rows", "full_rows", "q_i", "bufs", "m", "neg_m", "row_sum", "acc")

    def __init__(self, i, tile, Nq, buffered):
        self.i, self.q0, self.q1 = i, i * tile, min((i + 1) * tile, Nq)
        self.rows = self.q1 - self.q0
        self.full_rows = buffered and self.rows == tile
        self.m = self.neg_m = self.row_sum = self.acc = None


def _worth_two_threads(work: list[int], heads: int, tile: int, head_dim: int) -> bool:
    """Split the row blocks over two Python threads? Only with two torch threads, two row blocks, and
    work enough (at least 4 tiles of 8 heads) for the threads' start-up (about 0.1 ms) to be noise. Never
    under a dispatch or function mode (e.g. FlopCounterMode): modes are per thread, so the new threads'
    operations would escape it (a FLOP counter would count 0)."""
    if torch.get_num_threads() < 2 or len(work) < 2:
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    if _get_current_dispatch_mode_stack() or torch._C._len_torch_function_stack():
        return False
    return heads * sum(work) * tile * tile * head_dim >= 2**25


def _two_shares(work: list[int]) -> tuple[list, list]:
    """The row blocks (``work``: tiles to compute in each) in two shares of about equal work, the largest
    placed first."""
    shares, totals = ([], []), [0, 0]
    for i in sorted(range(len(work)), key=lambda i: -work[i]):
        lighter = totals.index(min(totals))
        shares[lighter].append(i)
        totals[lighter] += work[i]
    return shares


_POOL: list = []  # buffer sets of finished calls (_Buffers.take / give_back)
_POOL_LOCK = threading.Lock()
_SPLIT = threading.Lock()  # one two-thread call at a time: the thread setting it changes is process-wide


def _in_two_threads(run) -> None:
    """run(1) on a new Python thread while this one runs run(0), each with one torch thread.

    torch's thread setting is process-wide: it is 1 during the call (other Python threads using torch at
    the same time see that too) and restored afterwards. The new thread takes it when it first runs a
    parallel operation, so it does not start a team of two. Grad mode and inference mode are per thread:
    both are passed on. While another Python thread is in such a call, both shares run here, one
    after the other (its setting of 1 would otherwise be read as this call's to restore, leaving torch on
    one thread for good).
    """
    if not _SPLIT.acquire(blocking=False):
        run(0)
        run(1)
        return
    try:
        _split(run)
    finally:
        _SPLIT.release()


def _split(run) -> None:
    modes = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    errors = []

    def work(share):
        try:
            with torch.inference_mode(modes[1]), torch.set_grad_enabled(modes[0]):
                run(share)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = threading.Thread(target=work, args=(1,))
        worker.start()
        try:
            run(0)  # this thread takes the other share: one thread started per call, not two
        finally:
            worker.join()
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]


class _Buffers:
    """One call's (or one thread's) working memory for whole tiles, without autograd: a tile's scores and
    row sums, and for each of ``slots`` row blocks walked together its scaled queries, running sums and
    output.

    A call takes a set with :meth:`take` and leaves it with :meth:`give_back` for the next call of the same
    shape (:data:`POOL_SIZE` sets are kept, each of at most :data:`POOL_MAX_BYTES`). Allocated afresh, the
    2.6 MB of a call at the benchmark's shape came back from the C library as new pages on most calls, and
    the ~1,500 page faults took ~2 ms of a 14 ms causal call at N = 1024 (17.2 instead of 14.5 ms), paid by
    causal and full attention alike (measured with ``getrusage``, 1 thread).
    """

    def __init__(self, q, BH, G, tile, D, slots=1):
        B, Hq = q.shape[:2]
        self.key = self._key(q, BH, G, tile, D, slots)
        with torch.inference_mode(False):  # plain tensors: usable in and out of inference mode
            self.q = [q.new_empty(B, Hq, tile, D) for _ in range(slots)]  # a row block's scaled queries
            self.s = q.new_empty(BH, G * tile, tile)  # a tile's scores, then its exponentials
            self.sum = q.new_empty(BH, G * tile, 1)  # their row sums
            self.row_sums = [q.new_empty(BH, G * tile, 1) for _ in range(slots)]  # a block's running sums
            self.accs = [q.new_empty(BH, G * tile, D) for _ in range(slots)]
        self.nbytes = sum(t.nbytes for t in (*self.q, self.s, self.sum, *self.row_sums, *self.accs))

    @staticmethod
    def _key(q, BH, G, tile, D, slots):
        """What a set serves: the queries' dtype, device, batch and heads, and the call's tiling."""
        return (q.dtype, q.device, *q.shape[:2], BH, G, tile, D, slots)

    @classmethod
    def take(cls, q, BH, G, tile, D, slots=1):
        """A set left by an earlier call of this shape, or a new one (always new under a dispatch mode such as
        a fake-tensor trace, whose tensors must not be kept, and on a GPU: there a set given back once its
        kernels are queued could be taken by a call on another stream while they still run)."""
        if q.device.type == "cpu" and not torch._C._len_torch_dispatch_stack():
            key = cls._key(q, BH, G, tile, D, slots)
            with _POOL_LOCK:
                for i, bufs in enumerate(_POOL):
                    if bufs.key == key:
                        return _POOL.pop(i)
        return cls(q, BH, G, tile, D, slots)

    def give_back(self):
        """Keep this set for a later call (the newest :data:`POOL_SIZE` sets are kept)."""
        on_cpu = self.key[1].type == "cpu"  # (as in take)
        if on_cpu and self.nbytes <= POOL_MAX_BYTES and not torch._C._len_torch_dispatch_stack():
            with _POOL_LOCK:
                _POOL.append(self)
                del _POOL[:-POOL_SIZE]

    def slot(self, k):
        """The running sums and output of the k-th row block of a group (what :func:`_accumulate` fills)."""
        return _Slot(self.row_sums[k], self.accs[k])


class _Slot:
    __slots__ = ("row_sum", "acc")

    def __init__(self, row_sum, acc):
        self.row_sum, self.acc = row_sum, acc


def _accumulate(row_sum, acc, p, p_sum, v_j, grad, bufs=None):
    """Add one tile's row sums p_sum (rows, 1) and p @ v to the running sums (started by the first tile,
    in ``bufs`` if given)."""
    if row_sum is None:  # p_sum may be the reused buffer: copied
        if bufs is not None:
            return bufs.row_sum.copy_(p_sum), torch.bmm(p, v_j, out=bufs.acc)
        return p_sum.clone() if not grad else p_sum, torch.bmm(p, v_j)
    if grad:
        return row_sum + p_sum, torch.baddbmm(acc, p, v_j)
    row_sum.add_(p_sum)
    return row_sum, acc.baddbmm_(p, v_j)


class _NonFinite:
    """:func:`_nonfinite` of one call's keys and values, computed the first time a row block needs it and
    then kept: the two threads of the two-thread path and the row blocks redone with the running maximum
    share it (two sums and a host sync per call at most; none when no path needs it)."""

    def __init__(self, kt, vs, tile):
        self._args, self._value, self._lock = (kt, vs, tile), None, threading.Lock()

    def get(self):
        with self._lock:
            if self._value is None:
                self._value = _nonfinite(*self._args)
            return self._value


def _nonfinite(kt, vs, tile):
    """The key tiles holding a non-finite key ({j} or None), and the keys (BH, Nk) and key tiles holding a
    non-finite value ((bad, {j}) or None). A NaN or inf makes a sum non-finite; the sums are taken in float64,
    which large finite half or float32 entries cannot overflow (summed in their own dtype, they did, and such
    keys took the separate path with other rounding: R3, float16 values ~2000)."""
    kt, vs = kt.detach(), vs.detach()
    wide = torch.float64
    if math.isfinite((kt.sum(dtype=wide) + vs.sum(dtype=wide)).item()):
        return None, None
    key_sums, value_sums = kt.sum(1, dtype=wide), vs.sum(-1, dtype=wide)  # (BH, Nk) each
    bad = ~torch.stack((key_sums, value_sums)).isfinite()  # (2, BH, Nk)
    tiles = [[j for j, t in enumerate(b.split(tile, dim=-1)) if bool(t.any())] for b in bad]
    return (set(tiles[0]) or None), ((bad[1], set(tiles[1])) if tiles[1] else None)


def _hide(s, bias, hidden, BH, G, rows):
    """A diagonal tile's scores s (BH, G * rows, cols) with the mask added (``bias``), or, where a key is not
    finite (``bias`` None), with the hidden scores set to -inf (NaN + -inf would be NaN)."""
    if bias is not None:
        return s.add_(bias)
    s.view(BH, G, rows, s.shape[-1]).masked_fill_(hidden, float("-inf"))
    return s


def _hidden_values_out(p, v_j, bad, hidden, BH, G, rows):
    """A diagonal tile's values with the non-finite ones (keys ``bad``, (BH, cols)) set to 0, and what
    those keys add to the rows that see them (BH, G * rows, D): weight times value, NaN or inf as the
    formula gives it, and exactly 0 for the rows that cannot see them (``hidden``, (rows, cols) or
    (BH, 1, rows, cols)), where the product would give 0 x NaN = NaN."""
    cols = bad.any(0).nonzero().squeeze(1)  # the key columns where some batch item or head is bad
    bad_cols = bad[:, cols, None]  # (BH, nb, 1)
    v_bad = v_j[:, cols].masked_fill(~bad_cols, 0.0)  # (BH, nb, D): the bad values only
    hid = hidden[..., cols].expand(BH, G, rows, len(cols)).reshape(BH, G * rows, len(cols), 1)
    extra = (p[..., cols, None] * v_bad[:, None]).masked_fill(hid, 0.0).sum(2)
    return v_j.masked_fill(bad[..., None], 0.0), extra


def _rescale(row_sum, acc, alpha, grad):
    """Multiply the running sums by alpha: in place without autograd, out of place with it."""
    if grad:
        return row_sum * alpha, acc * alpha
    return row_sum.mul_(alpha), acc.mul_(alpha)


@functools.lru_cache(maxsize=32)
def _tile_mask(mask, rel, rows, cols, prefix_len, G, dtype, device):
    """One partial tile's mask two ways: hidden (rows, cols) bool, and for the G stacked heads of a group
    an additive 0 / -inf term (G * rows, cols) in ``dtype``. Positions are the tile's own: columns 0...,
    rows rel..., the prefix ``prefix_len`` columns. Cached, so never written to; made outside inference
    mode, so usable with autograd."""
    with torch.inference_mode(False), torch.no_grad():
        q_pos = torch.arange(rows, device=device)[:, None] + rel
        k_pos = torch.arange(cols, device=device)[None, :]
        hidden = ~visible(mask, q_pos, k_pos, prefix_len)
        bias = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))
        return hidden, bias.repeat(G, 1)
