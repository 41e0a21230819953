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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: str, *, q_offset: int, prefix_len: int | None,
    tile: int, key_padding_mask: torch.Tensor | None = None, return_lse: bool = False,
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
    out = q.new_empty(B * Hkv, G, Nq, D)
    lse = q.new_empty(B * Hkv, G, Nq) if return_lse else None
    for i in range(tmap.shape[0]):
        q0, q1 = i * tile, min((i + 1) * tile, Nq)
        rows = q1 - q0
        q_i = qs[:, :, q0:q1].reshape(B * Hkv, G * rows, D)  # the G heads of a group stacked as rows
        m = q.new_full((B * Hkv, G * rows, 1), float("-inf"))
        l = q.new_zeros((B * Hkv, G * rows, 1))
        acc = q.new_zeros((B * Hkv, G * rows, D))
        for j in torch.nonzero(tmap[i]).flatten().tolist():
            k0, k1 = j * tile, min((j + 1) * tile, Nk)
            s = torch.bmm(q_i, kt[:, :, k0:k1])  # (B*Hkv, G*rows, cols) scores of this tile
            if tmap[i, j] == PARTIAL:
                q_pos = torch.arange(q0, q1, device=q.device)[:, None] + q_offset
                k_pos = torch.arange(k0, k1, device=q.device)[None, :]
                hidden = ~visible(mask, q_pos, k_pos, prefix_len)  # (rows, cols)
                if key_padding_mask is not None:
                    hidden = hidden | pad_hidden[..., k0:k1]
                s.view(B * Hkv, G, rows, k1 - k0).masked_fill_(hidden, float("-inf"))
            # The running max only keeps exp() in range; the result does not depend on it, so no gradient.
            m_new = torch.maximum(m, s.detach().amax(-1, keepdim=True))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # a row that has seen no key yet
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old maximum
            p = s.sub_(m_safe).exp_()  # (B*Hkv, G*rows, cols)
            if grad:
                l = l * alpha + p.sum(-1, keepdim=True)
                acc = torch.baddbmm(acc * alpha, p, vs[:, k0:k1])
            else:
                l.mul_(alpha).add_(p.sum(-1, keepdim=True))
                acc.mul_(alpha).baddbmm_(p, vs[:, k0:k1])
            m = m_new
        out[:, :, q0:q1] = (acc / l).view(B * Hkv, G, rows, D)
        if return_lse:
            lse[:, :, q0:q1] = (m + torch.log(l)).view(B * Hkv, G, rows)
    out = out.view(B, Hq, Nq, D)
    return (out, lse.view(B, Hq, Nq)) if return_lse else out
