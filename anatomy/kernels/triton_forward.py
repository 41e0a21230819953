"""The forward kernel of FlashAttention in Triton (:mod:`anatomy.kernels.triton_kernel` launches it).

Dao et al. 2022; Dao 2023; the structure of Triton's tutorial ``06-fused-attention.py``. A program owns
``BLOCK_M`` query rows of one head. It walks the key tiles left to right in two loops:

* **off-band**: key tiles that every row of the block may see entirely (below the causal diagonal, or
  inside the prefix). No mask is evaluated there.
* **on-band**: the tiles the diagonal cuts through (and a ragged last tile): the mask predicate is applied
  element by element.

Tiles after the on-band are never visited, so their keys and values are never loaded: for a causal mask
that is everything above the diagonal. The two loop bounds follow from one fact shared by all three masks
of :mod:`anatomy.masks`: the keys a query sees form a prefix ``[0, x)`` of the key axis, with
``x = Nk`` (bidirectional), ``q_pos + 1`` (causal) or ``max(prefix_len, q_pos + 1)`` (prefix LM). So the
off-band ends where the block's first row stops seeing keys, and the on-band where its last row does.
The running maximum, normaliser and output follow the online softmax (Milakov & Gimelshein 2018), in
base 2 (``exp2``); the log-sum-exp of every row is stored (natural log, as the tiled kernel returns it).

Grouped-query attention: program ``(query block, b * Hq + h)`` reads key/value head ``h // G``.

The mask predicate (``_visible``) and the band bounds (``_key_bounds``) are defined here once; the backward
kernels (:mod:`anatomy.kernels.triton_backward`) use them too.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _visible(q_pos, k_pos, Nk, prefix_len, MASK_KIND: tl.constexpr):
    """The mask predicate of anatomy.masks (broadcasting q_pos against k_pos), and k_pos < Nk."""
    ok = k_pos < Nk
    if MASK_KIND == 1:
        ok = ok & (k_pos <= q_pos)
    elif MASK_KIND == 2:
        ok = ok & ((k_pos <= q_pos) | (k_pos < prefix_len))
    return ok


@triton.jit
def _key_bounds(first_q_pos, last_q_pos, Nk, prefix_len, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr):
    """For query rows at positions [first_q_pos, last_q_pos]: (end of the off-band, end of the on-band).

    Keys [0, off_end) are seen by every row (off_end a multiple of BLOCK_N), keys >= hi by no row.
    """
    if MASK_KIND == 0:
        full_end = Nk
        hi = Nk
    else:
        full_end = tl.minimum(tl.maximum(first_q_pos + 1, prefix_len), Nk)
        hi = tl.minimum(tl.maximum(last_q_pos + 1, prefix_len), Nk)
    full_end = tl.maximum(full_end, 0)
    off_end = (full_end // BLOCK_N) * BLOCK_N
    return off_end, hi


@triton.jit
def _fwd_band(
    acc, m_i, l_i, q, K, V, lo, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
    Nk, prefix_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr,
    ON_BAND: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Fold key tiles [lo, hi) into the online softmax (acc, m_i, l_i); masked only when ON_BAND."""
    k_ptrs = K + (lo + offs_n)[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + (lo + offs_n)[:, None] * stride_vn + offs_d[None, :] * stride_vd
    k_step = BLOCK_N * stride_kn
    v_step = BLOCK_N * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        if ON_BAND:
            k_idx = start_n + offs_n
            kv_ok = (k_idx[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_ptrs, mask=kv_ok, other=0.0)
            v = tl.load(v_ptrs, mask=kv_ok, other=0.0)
        elif HEAD_DIM == BLOCK_D:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if ON_BAND:  # the mask predicate of anatomy.masks, element by element
            seen = k_idx[None, :] < Nk
            if MASK_KIND == 1:
                seen = seen & (k_idx[None, :] <= q_pos[:, None])
            elif MASK_KIND == 2:
                seen = seen & ((k_idx[None, :] <= q_pos[:, None]) | (k_idx[None, :] < prefix_len))
            s = tl.where(seen, s, float("-inf"))
        # Every row sees key 0, in the first tile visited, so m_new is finite from the first step on.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
        k_ptrs += k_step
        v_ptrs += v_step
    return acc, m_i, l_i


@triton.jit
def _attn_fwd(
    Q, K, V, Out, LSE, COUNTS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    Hq, G, Nq, Nk, q_offset, prefix_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, PRECISION: tl.constexpr, COUNT: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hkv = h // G  # grouped-query attention: G query heads share one key/value head
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + hkv.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hkv.to(tl.int64) * stride_vh
    Out += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = offs_m + q_offset  # absolute positions of this block's query rows among the keys
    q_ok = (offs_m[:, None] < Nq) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    last_row = tl.minimum(start_m + BLOCK_M, Nq) - 1
    off_end, hi = _key_bounds(start_m + q_offset, last_row + q_offset, Nk, prefix_len, BLOCK_N, MASK_KIND)

    # Off-band: key tiles [0, off_end), which every row of the block sees whole. No mask.
    acc, m_i, l_i = _fwd_band(
        acc, m_i, l_i, q, K, V, 0, off_end, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
        Nk, prefix_len, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, MASK_KIND, False, PRECISION,
    )  # fmt: skip
    # On-band: key tiles [off_end, hi), which the diagonal (or the end of the keys) cuts through. Masked.
    acc, m_i, l_i = _fwd_band(
        acc, m_i, l_i, q, K, V, off_end, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn,
        stride_vd, Nk, prefix_len, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, MASK_KIND, True, PRECISION,
    )  # fmt: skip
    # Key tiles from hi on (above the diagonal): never loaded.

    acc = acc / l_i[:, None]
    o_ptrs = Out + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=q_ok)
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # back to natural log
    tl.store(LSE + bh.to(tl.int64) * Nq + offs_m, lse, mask=offs_m < Nq)
    if COUNT:  # how many key tiles this program loaded, off-band and on-band (for tests and the chapter)
        n_blocks = tl.cdiv(Nq, BLOCK_M)
        slot = COUNTS + (bh.to(tl.int64) * n_blocks + tl.program_id(0)) * 2
        tl.store(slot, off_end // BLOCK_N)
        tl.store(slot + 1, tl.cdiv(hi - off_end, BLOCK_N))
