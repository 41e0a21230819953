"""``anatomy.attention``: one entry point, four backends, one mask definition.

Backends:
  * ``"reference"``: the textbook formula, a dense masked softmax. Slow and obviously right.
  * ``"tiled"``: ours, a FlashAttention-style kernel in PyTorch (:mod:`anatomy.kernels.tiled`).
  * ``"triton"``: ours, the same algorithm in Triton (GPU, or the CPU interpreter with TRITON_INTERPRET=1).
  * ``"sdpa"``: PyTorch's ``scaled_dot_product_attention``, the peer we measure against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anatomy._checks import check_choice, check_int, check_positive_int
from anatomy.masks import MASKS, check_mask, default_q_offset, dense_mask, visible

BACKENDS = ("reference", "tiled", "triton", "sdpa")


def _check_inputs(q, k, v, mask, prefix_len, q_offset, backend, tile, key_padding_mask) -> int:
    """Validate everything ``attention`` accepts; returns the resolved q_offset."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims (B, heads, N, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    B, Hq, Nq, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"q and k must have the same batch size, got {B} and {k.shape[0]}")
    if k.shape[3] != D:
        raise ValueError(f"q and k must have the same head_dim, got {D} and {k.shape[3]}")
    Hkv, Nk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"the number of query heads ({Hq}) must be a multiple of the number of key/value heads ({Hkv})"
        )
    if Nq == 0 or Nk == 0 or D == 0:
        raise ValueError(f"empty attention: q has shape {tuple(q.shape)}, k has shape {tuple(k.shape)}")
    check_choice("backend", backend, BACKENDS)
    check_positive_int("tile", tile)
    check_mask(mask, prefix_len, Nk)
    q_offset = default_q_offset(Nq, Nk) if q_offset is None else check_int("q_offset", q_offset)
    if mask != "bidirectional" and q_offset + Nq > Nk:
        raise ValueError(
            f"q_offset + Nq must be <= Nk for mask={mask!r}: query row i sits at key position q_offset + i, "
            f"got q_offset={q_offset}, Nq={Nq}, Nk={Nk}"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError("key_padding_mask must be a bool tensor (True = a real key)")
        if tuple(key_padding_mask.shape) != (B, Nk):
            raise ValueError(
                f"key_padding_mask must have shape (B, Nk) = {(B, Nk)}, got {tuple(key_padding_mask.shape)}"
            )
    if key_padding_mask is None and q_offset >= 0:
        return q_offset  # key 0 is visible to every query at a position >= 0, under every mask
    # Visibility only grows with the query position, so the first row sees the fewest keys.
    first = visible(mask, torch.tensor(q_offset), torch.arange(Nk), prefix_len)
    seen = (
        first[None, :] if key_padding_mask is None else first.to(key_padding_mask.device) & key_padding_mask
    )
    if not bool(seen.any(-1).all()):
        raise ValueError(
            f"a query row has no visible key (mask={mask!r}, q_offset={q_offset}, prefix_len={prefix_len}"
            + (", key_padding_mask hides every key of some batch row" if key_padding_mask is not None else "")
            + "); its softmax would be 0/0"
        )
    return q_offset


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, N, D) -> (B, Hkv * groups, N, D): each key/value head serves `groups` query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _full_mask(mask, Nq, Nk, q_offset, prefix_len, key_padding_mask, device):
    """Dense boolean mask broadcastable to (B, H, Nq, Nk), or None when everything is visible."""
    m = (
        None
        if mask == "bidirectional"
        else dense_mask(mask, Nq, Nk, q_offset=q_offset, prefix_len=prefix_len, device=device)
    )
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        m = pad if m is None else (m & pad)
    return m


def reference_attention(q, k, v, mask="causal", *, q_offset, prefix_len=None, key_padding_mask=None):
    """Dense masked softmax: softmax(Q K^T / sqrt(D) + mask) V. Shapes and checks as in :func:`attention`."""
    q_offset = _check_inputs(q, k, v, mask, prefix_len, q_offset, "reference", 1, key_padding_mask)
    kw = dict(q_offset=q_offset, prefix_len=prefix_len, key_padding_mask=key_padding_mask)
    return _reference(q, k, v, mask, **kw)


def _reference(q, k, v, mask, *, q_offset, prefix_len=None, key_padding_mask=None):
    G = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, G), _repeat_kv(v, G)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, Hq, Nq, Nk)
    m = _full_mask(mask, q.shape[2], k.shape[2], q_offset, prefix_len, key_padding_mask, q.device)
    if m is not None:
        scores = scores.masked_fill(~m, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _sdpa(q, k, v, mask, *, q_offset, prefix_len, key_padding_mask):
    kw = dict(q_offset=q_offset, prefix_len=prefix_len, key_padding_mask=key_padding_mask)
    out = _sdpa_paths(q, k, v, mask, **kw)
    # NaN in, NaN out. PyTorch's CPU SDPA can return finite numbers where the softmax formula gives NaN
    # (a query or key holding NaN or inf: measured on every path, e.g. a NaN query row comes out as 0).
    # Two sums find out whether there is anything to fix; only then is the formula evaluated, and its
    # non-finite entries replace SDPA's. Every other entry is SDPA's own, bit for bit.
    if q.requires_grad or k.requires_grad:
        q_sum, k_sum = q.detach().sum(), k.detach().sum()
    else:
        q_sum, k_sum = q.sum(), k.sum()
    if math.isfinite(float(q_sum) + float(k_sum)):  # a false alarm (an overflow) only costs time
        return out
    exact = _reference(q, k, v, mask, **kw)
    return torch.where(torch.isfinite(exact), out, exact)


def _sdpa_paths(q, k, v, mask, *, q_offset, prefix_len, key_padding_mask):
    Nq, Nk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]  # SDPA shares each key/value head among its query heads, no copies
    if key_padding_mask is None:
        if mask == "bidirectional" or (q_offset + Nq == Nk and Nq == 1):
            # Everything is visible: a bidirectional block, or one query at the end of the cache (decoding).
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        if mask == "causal" and Nq == Nk and q_offset == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    # SDPA's is_causal aligns the mask top-left when Nq != Nk, which is wrong for a query block at the end
    # of a cache; an explicit mask built from our predicate is aligned by q_offset.
    m = _full_mask(mask, Nq, Nk, q_offset, prefix_len, key_padding_mask, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: str = "causal",
    *,
    prefix_len: int | None = None,
    q_offset: int | None = None,
    backend: str = "tiled",
    tile: int = 128,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with a causal, bidirectional or prefix-LM mask.

    q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) with Hq % Hkv == 0 (grouped-query attention) -> (B, Hq, Nq, D).
    mask: "causal" | "bidirectional" | "prefix" (keys < prefix_len are visible to every query).
    q_offset: absolute position of query row 0 among the keys (default Nk - Nq: the queries are the last
    Nq positions, as when a block of new tokens attends to a KV cache). Scale 1/sqrt(D).
    key_padding_mask: optional (B, Nk) bool, True for real keys (for padded batches).
    A query row that can see no key raises ValueError.
    """
    q_offset = _check_inputs(q, k, v, mask, prefix_len, q_offset, backend, tile, key_padding_mask)
    kw = dict(q_offset=q_offset, prefix_len=prefix_len, key_padding_mask=key_padding_mask)
    return _dispatch(q, k, v, mask, backend, tile, kw)


def _self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: str, backend: str, tile: int):
    """:func:`attention` without its checks, for a model's own self-attention (``anatomy.model.Attention``).

    Only for what the model has already made valid: q, k, v from its own projections (one dtype, device,
    batch and head_dim; Hq a multiple of Hkv), ``mask`` "causal" or "bidirectional", no padding, no prefix,
    the queries being the last Nq of the Nk positions (q_offset = Nk - Nq >= 0, so key 0 is visible to every
    query), and ``backend`` and ``tile`` from a validated Config. The checks cost ~0.25 ms per decoded token
    of SmolLM2 (30 layers); public calls keep them.
    """
    kw = dict(q_offset=k.shape[2] - q.shape[2], prefix_len=None, key_padding_mask=None)
    return _dispatch(q, k, v, mask, backend, tile, kw)


def _causal_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, linear, chunk: int = 256
) -> torch.Tensor:
    """Causal attention of the last Nq of Nk positions, by plain products: (B, Nq, Hq, D), contiguous.

    The textbook formula (:func:`reference_attention`'s order: scores, the causal mask by ``masked_fill``,
    softmax, times the values), with both products done by ``linear(x, w)`` = ``x @ w.T`` (anatomy.prefill
    passes oneDNN's), and grouped-query heads stacked as rows: the G query heads of one key/value head
    form one (G x rows, D) matrix, so each key/value head is two products and is never copied G times.
    Queries go ``chunk`` at a time, each against the keys up to its last position only (on a causal
    square, the blocks above the diagonal are skipped; a chat turn's 50 queries against a 577-token cache
    are one chunk). A NaN in a key stays where the formula puts it (a masked key's score is set to -inf,
    not added to); a NaN in a value also reaches the earlier queries of its chunk (their weight 0 times
    NaN), as it reaches every query of the call in the dense formula (:func:`reference_attention`, SDPA);
    batch rows never mix. For float32 on the CPU this ran 1.16x faster than SDPA with the cache's explicit
    mask at a chat turn's shape (50 queries, 577 keys, SmolLM2's 9/3 heads) and at parity on a 577-token
    square (1 thread, CPU clock, once, under load): a (150, 64) x (64, 577) product is oneDNN's good shape,
    and the scores of one chunk stay in cache.

    Only for what the calling model made valid (as :func:`_self_attention`): one dtype and device, Hq a
    multiple of Hkv, q_offset = Nk - Nq >= 0.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G, off = Hq // Hkv, Nk - Nq
    chunk = check_positive_int("chunk", chunk)
    out = q.new_empty(B, Nq, Hq, D)
    # the scale on the queries, not on the (G x rows, keys) scores: fewer numbers, and for D = 64 (1/8) the
    # same bits (a power of two); copied contiguous, so a one-chunk call's rows are views
    qs = torch.mul(q, D**-0.5, out=q.new_empty(q.shape))
    for i0 in range(0, Nq, chunk):
        i1 = min(i0 + chunk, Nq)
        n, keys = i1 - i0, off + i1  # this chunk's queries see keys < off + i1
        hide = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)  # the last n keys: causal
        for b in range(B):
            for h in range(Hkv):
                rows = qs[b, h * G : (h + 1) * G, i0:i1].reshape(G * n, D)
                s = linear(rows, k[b, h, :keys])  # (G n, keys) scaled scores
                s.view(G, n, keys)[:, :, keys - n :].masked_fill_(hide, float("-inf"))
                p = torch.softmax(s, dim=-1)
                o = linear(p, v[b, h, :keys].t())  # (G n, D)
                out[b, i0:i1, h * G : (h + 1) * G] = o.view(G, n, D).transpose(0, 1)
    return out


def _dispatch(q, k, v, mask, backend, tile, kw):
    if backend == "sdpa":
        return _sdpa(q, k, v, mask, **kw)
    if backend == "reference":
        return _reference(q, k, v, mask, **kw)
    if backend == "tiled":
        from anatomy.kernels.tiled import _tiled_attention

        return _tiled_attention(q, k, v, mask, tile=tile, **kw)
    from anatomy.kernels import triton_attention  # noqa: PLC0415 (optional dependency)

    return triton_attention(q, k, v, mask, tile=tile, **kw)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: str = "causal",
    *,
    prefix_len: int | None = None,
    q_offset: int | None = None,
    tile: int = 128,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention matrix softmax(Q K^T / sqrt(D)) with the mask applied, shape (B, Hq, Nq, Nk).

    Normalised with the log-sum-exp that the tiled kernel computes, so it is the matrix our kernel used.
    """
    q_offset = _check_inputs(q, k, k, mask, prefix_len, q_offset, "tiled", tile, key_padding_mask)
    from anatomy.kernels.tiled import _tiled_attention

    _, lse = _tiled_attention(
        q,
        k,
        k,
        mask,
        q_offset=q_offset,
        prefix_len=prefix_len,
        tile=tile,
        key_padding_mask=key_padding_mask,
        return_lse=True,
    )
    G = q.shape[1] // k.shape[1]
    scores = (q @ _repeat_kv(k, G).transpose(-1, -2)) * q.shape[-1] ** -0.5
    probs = torch.exp(scores - lse[..., None])
    m = _full_mask(mask, q.shape[2], k.shape[2], q_offset, prefix_len, key_padding_mask, q.device)
    return probs if m is None else probs.masked_fill(~m, 0.0)


__all__ = ["attention", "attention_probs", "reference_attention", "BACKENDS", "MASKS"]
