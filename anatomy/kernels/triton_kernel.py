"""FlashAttention in Triton: the tiled kernel of :mod:`anatomy.kernels.tiled`, one program per query block.

Forward (Dao et al. 2022; Dao 2023; the structure of Triton's tutorial ``06-fused-attention.py``). A
program owns ``BLOCK_M`` query rows of one head. It walks the key tiles left to right in two loops:

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

Backward: Triton kernels too (FlashAttention-2's split). ``dq`` is computed per query block over the same
key range as the forward; ``dk, dv`` per key block over the query blocks that can see it (again skipping
the empty ones), summing the G query heads that share the key/value head. The gradient of the returned
log-sum-exp is supported as well (it adds ``p * dlse`` to ``dS``).

Limits and fallbacks (documented, tested):

* ``tile`` becomes ``BLOCK_M = BLOCK_N``: the largest power of two <= ``tile``, at least 16 (``tl.dot``
  needs 16) and at most 128 / 64 / 32 for head_dim <= 64 / 128 / 256. So ``tile=100`` runs 64-wide tiles
  and ``tile=7`` runs 16-wide ones; the result does not depend on it beyond float rounding.
  :func:`block_size` gives the mapping. If a GPU's shared memory cannot hold those tiles (a T4 has
  64 KiB, e.g. for float32 128 x 64 tiles), the block is halved until the kernel launches.
* head_dim is padded to a power of two >= 16 inside the kernel (loads are masked); at most 256.
* dtypes float32, float16, bfloat16; accumulation is always float32, and float32 matmuls use
  ``input_precision="ieee"`` (no TF32), so float32 results agree with a float64 reference to ~1e-6.
* ``key_padding_mask`` is not implemented in the Triton kernel: such calls fall back to
  :func:`anatomy.kernels.tiled.tiled_attention` (forward and autograd), with the same results.
* Tensors must be on a CUDA device, or on the CPU with the Triton interpreter: ``TRITON_INTERPRET=1`` in the
  environment before triton is first imported (Triton decorates its own library then, and this module's
  kernels when it is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from anatomy._checks import is_int
from anatomy.masks import MASKS

INTERPRET: bool = bool(triton.knobs.runtime.interpret)  # fixed when the kernels below were decorated
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_KIND = {"bidirectional": 0, "causal": 1, "prefix": 2}
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def block_size(tile: int, head_dim: int) -> int:
    """The Triton tile edge (BLOCK_M = BLOCK_N) used for a requested ``tile`` and head dimension."""
    if not is_int(tile) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if not is_int(head_dim) or not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must be an int in [1, 256] for the Triton kernel, got {head_dim!r}")
    cap = 128 if head_dim <= 64 else 64 if head_dim <= 128 else 32
    return max(16, min(cap, 1 << (tile.bit_length() - 1)))


# ------------------------------------------------------------------------------------------- the kernels


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
):
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
):
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
    )
    # On-band: key tiles [off_end, hi), which the diagonal (or the end of the keys) cuts through. Masked.
    acc, m_i, l_i = _fwd_band(
        acc, m_i, l_i, q, K, V, off_end, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn,
        stride_vd, Nk, prefix_len, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, MASK_KIND, True, PRECISION,
    )
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


@triton.jit
def _bwd_dq_band(
    dq, q, do, lse2, delta, K, V, lo, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
    Nk, prefix_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, ON_BAND: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Add the key tiles [lo, hi) to dQ: P recomputed from the saved log-sum-exp, dS = P * (dP - delta)."""
    k_ptrs = K + (lo + offs_n)[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + (lo + offs_n)[:, None] * stride_vn + offs_d[None, :] * stride_vd
    k_step = BLOCK_N * stride_kn
    v_step = BLOCK_N * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        k_idx = start_n + offs_n
        kv_ok = (k_idx[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(k_ptrs, mask=kv_ok, other=0.0)
        v = tl.load(v_ptrs, mask=kv_ok, other=0.0)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse2[:, None])
        if ON_BAND:
            p = tl.where(_visible(q_pos[:, None], k_idx[None, :], Nk, prefix_len, MASK_KIND), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
        k_ptrs += k_step
        v_ptrs += v_step
    return dq


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    Hq, G, Nq, Nk, q_offset, prefix_len, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ for one query block, over the same off-band and on-band key tiles as the forward."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hkv = h // G
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    DQ += b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
    K += b.to(tl.int64) * stride_kb + hkv.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hkv.to(tl.int64) * stride_vh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = offs_m + q_offset
    row_ok = offs_m < Nq
    q_ok = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=q_ok, other=0.0)
    lse2 = tl.load(LSE + bh.to(tl.int64) * Nq + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * Nq + offs_m, mask=row_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    last_row = tl.minimum(start_m + BLOCK_M, Nq) - 1
    off_end, hi = _key_bounds(start_m + q_offset, last_row + q_offset, Nk, prefix_len, BLOCK_N, MASK_KIND)
    dq = _bwd_dq_band(
        dq, q, do, lse2, delta, K, V, 0, off_end, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn,
        stride_vd, Nk, prefix_len, qk_scale, HEAD_DIM, BLOCK_N, MASK_KIND, False, PRECISION,
    )
    dq = _bwd_dq_band(
        dq, q, do, lse2, delta, K, V, off_end, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn,
        stride_vd, Nk, prefix_len, qk_scale, HEAD_DIM, BLOCK_N, MASK_KIND, True, PRECISION,
    )
    dq = dq * sm_scale
    tl.store(DQ + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty),
             mask=q_ok)


@triton.jit
def _bwd_dkdv_band(
    dk, dv, k, v, Q, DO, LSE, DELTA, lo, hi, k_idx, offs_m0, offs_d, stride_qm, stride_qd, stride_dom,
    stride_dod, Nq, Nk, q_offset, prefix_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASK_KIND: tl.constexpr, ON_BAND: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Add query blocks [lo, hi) of one query head to dK, dV of one key block (P^T and dS^T, transposed)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        row_ok = offs_m < Nq
        q_ok = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        # Rows past Nq load q = dO = 0 and lse = delta = 0, so they add exactly zero to dk and dv.
        q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=q_ok, other=0.0)
        lse2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        pT = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse2[None, :])
        if ON_BAND:
            seen = _visible((offs_m + q_offset)[None, :], k_idx[:, None], Nk, prefix_len, MASK_KIND)
            pT = tl.where(seen, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    Hkv, G, Nq, Nk, q_offset, prefix_len, sm_scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK, dV for one key block: the query blocks that see it, for each of the G query heads sharing it."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)  # b * Hkv + hkv
    b = bh // Hkv
    hkv = bh % Hkv
    K += b.to(tl.int64) * stride_kb + hkv.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hkv.to(tl.int64) * stride_vh

    k_idx = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (k_idx[:, None] < Nk) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + k_idx[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_ok, other=0.0)
    v = tl.load(V + k_idx[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query rows [m_lo, m_full) see part of this key block (masked), rows >= m_full see all of it; rows
    # below m_lo see none of it and are skipped (the transpose of the forward's skipped tiles).
    end_n = tl.minimum(start_n + BLOCK_N, Nk)
    if MASK_KIND == 0:
        m_lo = start_n * 0
        m_full = start_n * 0
    else:
        m_lo = tl.maximum(start_n - q_offset, 0)
        m_full = tl.maximum(end_n - 1 - q_offset, 0)
        if MASK_KIND == 2:
            m_lo = tl.where(start_n < prefix_len, 0, m_lo)
            m_full = tl.where(end_n <= prefix_len, 0, m_full)
    n_rows = tl.cdiv(Nq, BLOCK_M) * BLOCK_M
    m_lo = (m_lo // BLOCK_M) * BLOCK_M
    m_full = tl.minimum(tl.maximum(tl.cdiv(m_full, BLOCK_M) * BLOCK_M, m_lo), n_rows)
    if end_n - start_n < BLOCK_N:
        m_full = n_rows  # a ragged key block is masked everywhere

    for g in range(0, G):
        h = hkv * G + g
        bhq = b * (Hkv * G) + h
        Qh = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        DOh = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        LSEh = LSE + bhq.to(tl.int64) * Nq
        DELTAh = DELTA + bhq.to(tl.int64) * Nq
        dk, dv = _bwd_dkdv_band(
            dk, dv, k, v, Qh, DOh, LSEh, DELTAh, m_lo, m_full, k_idx, offs_m0, offs_d, stride_qm, stride_qd,
            stride_dom, stride_dod, Nq, Nk, q_offset, prefix_len, qk_scale, HEAD_DIM, BLOCK_M, MASK_KIND,
            True, PRECISION,
        )
        dk, dv = _bwd_dkdv_band(
            dk, dv, k, v, Qh, DOh, LSEh, DELTAh, m_full, n_rows, k_idx, offs_m0, offs_d, stride_qm,
            stride_qd, stride_dom, stride_dod, Nq, Nk, q_offset, prefix_len, qk_scale, HEAD_DIM, BLOCK_M,
            MASK_KIND, False, PRECISION,
        )
    dk = dk * sm_scale
    DK += b.to(tl.int64) * stride_dkb + hkv.to(tl.int64) * stride_dkh
    DV += b.to(tl.int64) * stride_dvb + hkv.to(tl.int64) * stride_dvh
    tl.store(DK + k_idx[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty),
             mask=kv_ok)
    tl.store(DV + k_idx[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty),
             mask=kv_ok)


# --------------------------------------------------------------------------------------- host wrappers


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in DTYPES:
            raise TypeError(f"the Triton kernel takes float32, float16 or bfloat16 tensors, got {t.dtype}")
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and INTERPRET:
            continue
        raise RuntimeError(
            f"the Triton kernel runs on CUDA tensors, or on CPU tensors under the Triton interpreter; got a "
            f"{t.device} tensor and TRITON_INTERPRET={'1' if INTERPRET else 'unset'} when "
            "anatomy.kernels.triton_kernel was first imported (set TRITON_INTERPRET=1 before that import)"
        )


def _launch_config(q: torch.Tensor, mask: str) -> dict:
    D = q.shape[-1]
    return dict(
        HEAD_DIM=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        MASK_KIND=_MASK_KIND[mask],
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_stages=2,
    )


# Largest block that fit in shared memory, per (kernel, device, dtype, head_dim): see _launch.
_FITTING_BLOCK: dict[tuple, int] = {}


def _launch(name: str, q: torch.Tensor, block: int, launch) -> int:
    """Call ``launch(block)``; if the GPU's shared memory cannot hold the tiles, halve the block and retry.

    A T4 (Colab) has 64 KiB of shared memory per block, an A100 164 KiB: float32 tiles of 128 x 64 fit the
    second, not the first. The block that worked is remembered, so the retry happens once per shape.
    Returns the block used.
    """
    key = (name, str(q.device), q.dtype, q.shape[-1])
    block = min(block, _FITTING_BLOCK.get(key, block))
    while True:
        try:
            launch(block)
            return block
        except triton.runtime.errors.OutOfResources:
            if block <= 16:
                raise
            block //= 2
            _FITTING_BLOCK[key] = block


def _interpreter_upcast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under the interpreter, bfloat16 runs as float32: its tl.dot multiplies raw bit patterns.

    The interpreter stores bfloat16 as uint16 and does not convert it before a matmul (triton-lang/triton
    issue 11584; its debugging guide asks for a cast to float32). On a GPU bfloat16 runs natively.
    """
    if INTERPRET and tensors[0].dtype == torch.bfloat16:
        return tuple(None if t is None else t.float() for t in tensors)
    return tensors


def _forward(q, k, v, mask, q_offset, prefix_len, tile, count=False):
    in_dtype = q.dtype
    q, k, v = _interpreter_upcast(q, k, v)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    cfg = _launch_config(q, mask)
    out = torch.empty((B, Hq, Nq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    counts = None

    def launch(block):
        nonlocal counts
        n_blocks = triton.cdiv(Nq, block)
        counts = torch.zeros((B * Hq, n_blocks, 2), dtype=torch.int32, device=q.device) if count else None
        _attn_fwd[(n_blocks, B * Hq)](
            q, k, v, out, lse, lse if counts is None else counts,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            Hq, Hq // Hkv, Nq, Nk, q_offset, prefix_len or 0, D**-0.5 * _LOG2E,
            BLOCK_M=block, BLOCK_N=block, num_warps=4 if block <= 64 else 8, COUNT=count, **cfg,
        )  # fmt: skip

    _launch("fwd", q, block_size(tile, D), launch)
    return out.to(in_dtype), lse, counts


def _backward(q, k, v, out, lse, dout, dlse, mask, q_offset, prefix_len, tile):
    in_dtype = q.dtype
    q, k, v, out, dout = _interpreter_upcast(q, k, v, out, dout)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    cfg = _launch_config(q, mask)
    # delta_i = sum_d O_id dO_id (minus the gradient of the returned log-sum-exp, if any)
    delta = (out.float() * dout.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    common = (Nq, Nk, q_offset, prefix_len or 0, D**-0.5, D**-0.5 * _LOG2E)

    def launch_dq(block):
        _attn_bwd_dq[(triton.cdiv(Nq, block), B * Hq)](
            q, k, v, dout, dq, lse, delta,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
            Hq, Hq // Hkv, *common,
            BLOCK_M=block, BLOCK_N=block, num_warps=4 if block <= 64 else 8, **cfg,
        )  # fmt: skip

    def launch_dkdv(block):
        _attn_bwd_dkdv[(triton.cdiv(Nk, block), B * Hkv)](
            q, k, v, dout, dk, dv, lse, delta,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            Hkv, Hq // Hkv, *common,
            BLOCK_M=block, BLOCK_N=block, num_warps=4 if block <= 64 else 8, **cfg,
        )  # fmt: skip

    _launch("bwd_dq", q, block_size(tile, D), launch_dq)
    _launch("bwd_dkdv", q, block_size(tile, D), launch_dkdv)
    return dq.to(in_dtype), dk.to(in_dtype), dv.to(in_dtype)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, q_offset, prefix_len, tile):
        out, lse, _ = _forward(q, k, v, mask, q_offset, prefix_len, tile)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (mask, q_offset, prefix_len, tile)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(q, k, v, out, lse, dout, dlse, *ctx.args)
        return dq, dk, dv, None, None, None, None


def triton_attention(
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
):
    """FlashAttention in Triton; q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D) -> out [, lse (B, Hq, Nq)].

    Same semantics as :func:`anatomy.kernels.tiled.tiled_attention` (arguments are assumed valid:
    ``anatomy.attention`` checks them). Differentiable through Triton backward kernels. With a
    ``key_padding_mask`` it falls back to the tiled PyTorch kernel. ``lse`` is returned in the input dtype,
    like the tiled kernel's.
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if key_padding_mask is not None:
        from anatomy.kernels.tiled import tiled_attention

        return tiled_attention(
            q, k, v, mask, q_offset=q_offset, prefix_len=prefix_len, tile=tile,
            key_padding_mask=key_padding_mask, return_lse=return_lse,
        )  # fmt: skip
    _check_device(q, k, v)
    block_size(tile, q.shape[-1])
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad:
        out, lse = _TritonAttention.apply(q, k, v, mask, q_offset, prefix_len, tile)
    else:
        out, lse, _ = _forward(q, k, v, mask, q_offset, prefix_len, tile)
    return (out, lse.to(q.dtype)) if return_lse else out


def visited_tiles(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: str,
    *,
    q_offset: int,
    prefix_len: int | None = None,
    tile: int = 128,
) -> torch.Tensor:
    """Run the forward kernel and report what each program loaded: int tensor (B*Hq, query blocks, 2).

    ``[..., 0]`` counts the off-band key tiles (no mask), ``[..., 1]`` the on-band ones (masked). Summed
    over query blocks they should equal the FULL and non-EMPTY - FULL tiles of :func:`anatomy.masks.tile_map`
    for ``tile=block_size(tile, D)`` (up to a ragged last key tile, which the kernel masks).
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    _check_device(q, k, v)
    block_size(tile, q.shape[-1])
    with torch.no_grad():
        return _forward(q, k, v, mask, q_offset, prefix_len, tile, count=True)[2]


__all__ = ["DTYPES", "INTERPRET", "block_size", "triton_attention", "visited_tiles"]
