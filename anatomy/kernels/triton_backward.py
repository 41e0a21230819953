"""The backward kernels of FlashAttention in Triton (:mod:`anatomy.kernels.triton_kernel` launches them).

FlashAttention-2's split (Dao 2023): ``dq`` is computed per query block over the same key range as the
forward (:mod:`anatomy.kernels.triton_forward`); ``dk, dv`` per key block over the query blocks that can see
it (again skipping the empty ones), summing the G query heads that share the key/value head. The gradient
of the returned log-sum-exp is supported as well (it adds ``p * dlse`` to ``dS``). ``P`` is recomputed from
the log-sum-exp the forward saved, in base 2 like the forward.
"""

from __future__ import annotations

import triton
import triton.language as tl

from anatomy.kernels.triton_forward import _key_bounds, _visible


@triton.jit
def _bwd_dq_band(
    dq, q, do, lse2, delta, K, V, lo, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn, stride_vd,
    Nk, prefix_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, ON_BAND: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
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
):  # fmt: skip
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
    )  # fmt: skip
    dq = _bwd_dq_band(
        dq, q, do, lse2, delta, K, V, off_end, hi, q_pos, offs_n, offs_d, stride_kn, stride_kd, stride_vn,
        stride_vd, Nk, prefix_len, qk_scale, HEAD_DIM, BLOCK_N, MASK_KIND, True, PRECISION,
    )  # fmt: skip
    dq = dq * sm_scale
    tl.store(
        DQ + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
        dq.to(DQ.dtype.element_ty),
        mask=q_ok,
    )


@triton.jit
def _bwd_dkdv_band(
    dk, dv, k, v, Q, DO, LSE, DELTA, lo, hi, k_idx, offs_m0, offs_d, stride_qm, stride_qd, stride_dom,
    stride_dod, Nq, Nk, q_offset, prefix_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASK_KIND: tl.constexpr, ON_BAND: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
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
):  # fmt: skip
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
        )  # fmt: skip
        dk, dv = _bwd_dkdv_band(
            dk, dv, k, v, Qh, DOh, LSEh, DELTAh, m_full, n_rows, k_idx, offs_m0, offs_d, stride_qm,
            stride_qd, stride_dom, stride_dod, Nq, Nk, q_offset, prefix_len, qk_scale, HEAD_DIM, BLOCK_M,
            MASK_KIND, False, PRECISION,
        )  # fmt: skip
    dk = dk * sm_scale
    DK += b.to(tl.int64) * stride_dkb + hkv.to(tl.int64) * stride_dkh
    DV += b.to(tl.int64) * stride_dvb + hkv.to(tl.int64) * stride_dvh
    tl.store(
        DK + k_idx[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
        dk.to(DK.dtype.element_ty),
        mask=kv_ok,
    )
    tl.store(
        DV + k_idx[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
        dv.to(DV.dtype.element_ty),
        mask=kv_ok,
    )
