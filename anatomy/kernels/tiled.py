"""A FlashAttention-style kernel in plain PyTorch: online softmax over key tiles.

For each block of query rows we walk the key tiles left to right, keeping a running maximum ``m``, a
running normaliser ``l`` and an unnormalised output ``acc`` (Milakov & Gimelshein 2018; Dao et al. 2022).
The tile map from :mod:`anatomy.masks` says which tiles to visit: EMPTY tiles (above the causal diagonal)
are never touched, FULL tiles need no mask, PARTIAL tiles apply the mask predicate element by element.

Grouped-query attention costs nothing extra: the G query heads that share one key/value head are stacked
as extra rows of one matmul against that head's keys.
"""

from __future__ import annotations

import torch

from anatomy.masks import EMPTY, PARTIAL, tile_map, visible


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
):
    """Tiled attention; q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D) -> out (B, Hq, Nq, D) [, lse (B, Hq, Nq)].

    Arguments are assumed valid (``anatomy.attention`` checks them).
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    tmap = tile_map(mask, Nq, Nk, tile=tile, q_offset=q_offset, prefix_len=prefix_len)
    if key_padding_mask is not None:
        # Padding can hide keys inside any tile, so every visited tile is masked.
        tmap = torch.where(tmap == EMPTY, tmap, torch.full_like(tmap, PARTIAL))
        pad_hidden = ~key_padding_mask.repeat_interleave(Hkv, 0)[:, None, None, :]  # (B*Hkv, 1, 1, Nk)
    # Without autograd the running state is updated in place (no temporaries); with it, out of place.
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    qs = (q * D**-0.5).reshape(B * Hkv, G, Nq, D)
    kt = k.reshape(B * Hkv, Nk, D).transpose(1, 2)  # (B*Hkv, D, Nk)
    vs = v.reshape(B * Hkv, Nk, D)
    k_tiles, v_tiles = kt.split(tile, dim=2), vs.split(tile, dim=1)  # views, sliced once
    out = q.new_empty(B * Hkv, G, Nq, D)
    lse = q.new_empty(B * Hkv, G, Nq) if return_lse else None
    masks: dict[tuple[int, int, int], tuple] = {}  # diagonal tiles often share one mask
    for i, row in enumerate(tmap.tolist()):  # plain Python ints: no tensor ops in the tile bookkeeping
        q0, q1 = i * tile, min((i + 1) * tile, Nq)
        rows = q1 - q0
        q_i = qs[:, :, q0:q1].reshape(B * Hkv, G * rows, D)  # the G heads of a group stacked as rows
        m = row_sum = acc = None
        for j, kind in enumerate(row):
            if kind == EMPTY:
                continue  # above the diagonal: never touched
            k0, k1 = j * tile, min((j + 1) * tile, Nk)
            k_j, v_j = k_tiles[j], v_tiles[j]
            partial = kind == PARTIAL
            if partial:
                key = (q0 + q_offset - k0, rows, k1 - k0) if prefix_len is None else (q0, k0, k1)
                if key not in masks:
                    masks[key] = _tile_mask(mask, q0, q1, k0, k1, q_offset, prefix_len, G, q)
                hidden, bias, keep = masks[key]
            if partial and key_padding_mask is None:
                # The mask as an additive 0 / -inf bias, added inside the matmul (no separate pass).
                s = torch.baddbmm(bias, q_i, k_j)  # (B*Hkv, G*rows, cols) scores of this tile
            else:
                s = torch.bmm(q_i, k_j)
                if partial:
                    hidden = hidden | pad_hidden[..., k0:k1]
                    s.view(B * Hkv, G, rows, k1 - k0).masked_fill_(hidden, float("-inf"))
            # The running max only keeps exp() in range; the result does not depend on it, so no gradient.
            m_tile = (s.detach() if grad else s).amax(-1, keepdim=True)
            if m is None:  # first tile of the row block: nothing to rescale yet
                m_new = m_tile
            else:
                m_new = torch.maximum(m, m_tile)
            if key_padding_mask is not None:
                # Only padding can leave a row without any visible key so far (key 0 is always visible
                # otherwise, and tiles are visited left to right); keep exp() finite for such rows.
                m_new = m_new.masked_fill(m_new == float("-inf"), 0.0)
            if partial and key_padding_mask is None:
                # exp() of -inf (or of anything below about -88, where float32 turns denormal) takes a slow
                # path on CPUs, ~15x slower than exp() of ordinary numbers: clamp the hidden scores to -80
                # and zero their probabilities exactly with the 0/1 mask instead.
                p = s.sub_(m_new).clamp_min_(-80.0).exp_()
                p = p * keep if grad else p.mul_(keep)
            else:
                p = s.sub_(m_new).exp_()  # (B*Hkv, G*rows, cols)
            if m is None:
                row_sum, acc = p.sum(-1, keepdim=True), torch.bmm(p, v_j)
            else:
                alpha = torch.exp(m - m_new)  # rescales what was accumulated under the old maximum
                if grad:
                    row_sum = row_sum * alpha + p.sum(-1, keepdim=True)
                    acc = torch.baddbmm(acc * alpha, p, v_j)
                else:
                    row_sum.mul_(alpha).add_(p.sum(-1, keepdim=True))
                    acc.mul_(alpha).baddbmm_(p, v_j)
            m = m_new
        out[:, :, q0:q1] = (acc / row_sum).view(B * Hkv, G, rows, D)
        if return_lse:
            lse[:, :, q0:q1] = (m + torch.log(row_sum)).view(B * Hkv, G, rows)
    out = out.view(B, Hq, Nq, D)
    return (out, lse.view(B, Hq, Nq)) if return_lse else out


def _tile_mask(mask, q0, q1, k0, k1, q_offset, prefix_len, G, like):
    """One partial tile's mask three ways: hidden (rows, cols) bool, and for the G stacked heads of a group
    an additive bias (0 / -inf) and a multiplicative keep (1 / 0), both (G * rows, cols) in q's dtype."""
    q_pos = torch.arange(q0, q1, device=like.device)[:, None] + q_offset
    k_pos = torch.arange(k0, k1, device=like.device)[None, :]
    hidden = ~visible(mask, q_pos, k_pos, prefix_len)
    bias = torch.zeros(hidden.shape, dtype=like.dtype, device=like.device).masked_fill_(hidden, float("-inf"))
    keep = (~hidden).to(like.dtype)
    return hidden, bias.repeat(G, 1), keep.repeat(G, 1)
