"""Attention masks: one predicate per family, and everything derived from it.

A mask is a predicate ``visible(q_pos, k_pos) -> bool``: may the query at absolute position ``q_pos``
attend to the key at position ``k_pos``? The dense matrix, the tile map used by the kernels, the FLOP
counter and the plots are all derived from the same predicate (the FlexAttention idea), so they can
never disagree.

Families:
  * ``"causal"``        (decoder):  k_pos <= q_pos
  * ``"bidirectional"`` (encoder):  always
  * ``"prefix"``        (prefix LM): k_pos < prefix_len  or  k_pos <= q_pos
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from anatomy._checks import check_device, check_int, check_positive_int

__all__ = [
    "EMPTY",
    "FULL",
    "MASKS",
    "PARTIAL",
    "TileCount",
    "causal_tile_ideal",
    "check_mask",
    "count_tiles",
    "default_q_offset",
    "dense_mask",
    "tile_map",
    "visible",
]

MASKS = ("causal", "bidirectional", "prefix")

# Tile classes, as in the Triton tutorial: tiles above the diagonal are never visited, tiles on it are
# computed with the mask applied element by element, tiles below it need no mask at all.
EMPTY, PARTIAL, FULL = 0, 1, 2


def check_mask(mask: str, prefix_len: int | None, n_keys: int) -> None:
    """Validate a mask name and its ``prefix_len`` against the number of keys."""
    if not isinstance(mask, str) or mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if mask == "prefix":
        if prefix_len is None:
            raise ValueError('mask="prefix" needs prefix_len (the number of keys visible to every query)')
        check_int("prefix_len", prefix_len)
        if not 0 <= prefix_len <= n_keys:
            raise ValueError(f"prefix_len must be in [0, {n_keys}] (the number of keys), got {prefix_len}")
    elif prefix_len is not None:
        raise ValueError(f'prefix_len is only meaningful with mask="prefix", got mask={mask!r}')


def visible(
    mask: str, q_pos: torch.Tensor, k_pos: torch.Tensor, prefix_len: int | None = None
) -> torch.Tensor:
    """The mask predicate: True where query position ``q_pos`` may see key position ``k_pos`` (broadcasts)."""
    if not isinstance(q_pos, torch.Tensor) or not isinstance(k_pos, torch.Tensor):
        raise TypeError(
            f"q_pos and k_pos must be torch.Tensors, got {type(q_pos).__name__}, {type(k_pos).__name__}"
        )
    if mask == "causal":
        return k_pos <= q_pos
    if mask == "bidirectional":
        return torch.ones(
            torch.broadcast_shapes(q_pos.shape, k_pos.shape), dtype=torch.bool, device=q_pos.device
        )
    if mask == "prefix":
        check_int("prefix_len", prefix_len)
        return (k_pos <= q_pos) | (k_pos < prefix_len)
    raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")


def default_q_offset(n_queries: int, n_keys: int) -> int:
    """Queries sit at the end of the keys by default (a query block appended to a cache)."""
    check_int("n_queries", n_queries)
    check_int("n_keys", n_keys)
    return n_keys - n_queries


def dense_mask(
    mask: str,
    n_queries: int,
    n_keys: int,
    *,
    q_offset: int | None = None,
    prefix_len: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The mask as a dense boolean matrix, shape (n_queries, n_keys); row i is query position q_offset + i."""
    n_queries, n_keys = check_int("n_queries", n_queries, lo=0), check_int("n_keys", n_keys, lo=0)
    check_mask(mask, prefix_len, n_keys)
    q_offset = check_int("q_offset", q_offset, none=True)
    q_offset = default_q_offset(n_queries, n_keys) if q_offset is None else q_offset
    device = check_device("device", device, none=True)
    q_pos = torch.arange(n_queries, device=device)[:, None] + q_offset
    k_pos = torch.arange(n_keys, device=device)[None, :]
    return visible(mask, q_pos, k_pos, prefix_len)


@lru_cache(maxsize=256)
def _tile_map(mask, n_queries, n_keys, tile_q, tile_k, q_offset, prefix_len) -> torch.Tensor:
    dense = dense_mask(mask, n_queries, n_keys, q_offset=q_offset, prefix_len=prefix_len)
    tq, tk = -(-n_queries // tile_q), -(-n_keys // tile_k)
    # Pad to whole tiles; padding counts as "visible" so it never turns a full tile partial (it is never
    # computed: the kernel slices tiles to the real sequence length).
    padded = torch.ones(tq * tile_q, tk * tile_k, dtype=torch.bool)
    padded[:n_queries, :n_keys] = dense
    tiles = padded.view(tq, tile_q, tk, tile_k).transpose(1, 2)  # (Tq, Tk, tile_q, tile_k)
    real = torch.zeros_like(padded)
    real[:n_queries, :n_keys] = True
    any_real = (padded & real).view(tq, tile_q, tk, tile_k).transpose(1, 2).flatten(2).any(-1)
    out = torch.full((tq, tk), PARTIAL, dtype=torch.int8)
    out[tiles.flatten(2).all(-1)] = FULL
    out[~any_real] = EMPTY
    return out


def tile_map(
    mask: str,
    n_queries: int,
    n_keys: int,
    *,
    tile: int | tuple[int, int] = 128,
    q_offset: int | None = None,
    prefix_len: int | None = None,
) -> torch.Tensor:
    """Classify every (query tile, key tile) pair as EMPTY, PARTIAL or FULL; int8 tensor (Tq, Tk).

    Derived from the dense predicate, so it is exact for every mask, offset and ragged last tile.
    """
    n_queries, n_keys = check_positive_int("n_queries", n_queries), check_positive_int("n_keys", n_keys)
    tile_q, tile_k = _tile_pair(tile, n_queries, n_keys)
    check_mask(mask, prefix_len, n_keys)
    q_offset = check_int("q_offset", q_offset, none=True)
    q_offset = default_q_offset(n_queries, n_keys) if q_offset is None else q_offset
    args = (mask, n_queries, n_keys, tile_q, tile_k, q_offset, prefix_len)
    if torch._C._len_torch_dispatch_stack():  # e.g. a fake-tensor trace: its tensors must not be cached
        return _tile_map.__wrapped__(*args)
    return _tile_map(*args).clone()


def _tile_pair(tile, n_queries: int, n_keys: int) -> tuple[int, int]:
    """Validate ``tile`` (an int or a pair) and clamp it to the sequence lengths: a tile longer than the
    sequence is one tile of the whole sequence (the same tile map), without allocating tile^2 entries."""
    pair = (tile, tile) if not isinstance(tile, (tuple, list)) else tuple(tile)
    if len(pair) != 2:
        raise ValueError(f"tile must be a positive int or a pair of them, got {tile!r}")
    tile_q, tile_k = (check_positive_int("tile", t) for t in pair)
    return min(tile_q, n_queries), min(tile_k, n_keys)


@dataclass(frozen=True)
class TileCount:
    """What a tiled kernel computes for one (query block x key block) problem, per batch and head."""

    tiles_total: int
    tiles_full: int
    tiles_partial: int
    tiles_empty: int
    flops_computed: int  # QK^T and PV matmul FLOPs actually issued (2 * 2 * rows * cols * head_dim per tile)
    flops_dense: int  # the same for a kernel that skipped nothing
    flops_needed: int  # only the visible (query, key) pairs: the floor no tile size can beat

    @property
    def computed_fraction(self) -> float:
        return self.flops_computed / self.flops_dense


def count_tiles(
    mask: str,
    n_queries: int,
    n_keys: int,
    head_dim: int,
    *,
    tile: int | tuple[int, int] = 128,
    q_offset: int | None = None,
    prefix_len: int | None = None,
    batch: int = 1,
    heads: int = 1,
) -> TileCount:
    """Tiles and matmul FLOPs a tiled kernel computes vs skips for this shape and mask."""
    n_queries, n_keys = check_positive_int("n_queries", n_queries), check_positive_int("n_keys", n_keys)
    head_dim = check_positive_int("head_dim", head_dim)
    batch, heads = check_positive_int("batch", batch), check_positive_int("heads", heads)
    tile_q, tile_k = _tile_pair(tile, n_queries, n_keys)
    tmap = tile_map(mask, n_queries, n_keys, tile=tile, q_offset=q_offset, prefix_len=prefix_len)
    rows = torch.full((tmap.shape[0],), tile_q)
    rows[-1] = n_queries - tile_q * (tmap.shape[0] - 1)
    cols = torch.full((tmap.shape[1],), tile_k)
    cols[-1] = n_keys - tile_k * (tmap.shape[1] - 1)
    area = rows[:, None] * cols[None, :]
    per_pair = 4 * head_dim * batch * heads  # 2 FLOPs per multiply-add, two matmuls (QK^T and PV)
    needed = int(dense_mask(mask, n_queries, n_keys, q_offset=q_offset, prefix_len=prefix_len).sum())
    return TileCount(
        tiles_total=tmap.numel(),
        tiles_full=int((tmap == FULL).sum()),
        tiles_partial=int((tmap == PARTIAL).sum()),
        tiles_empty=int((tmap == EMPTY).sum()),
        flops_computed=int(area[tmap != EMPTY].sum()) * per_pair,
        flops_dense=n_queries * n_keys * per_pair,
        flops_needed=needed * per_pair,
    )


def causal_tile_ideal(n_tiles: int) -> float:
    """Fraction of tiles a causal kernel computes on a square T x T tile grid: (T + 1) / 2T."""
    n_tiles = check_positive_int("n_tiles", n_tiles)
    return (n_tiles + 1) / (2 * n_tiles)
