"""What a causal mask saves: FLOPs, bytes and measured time of attention and of a whole forward
pass (the counts are :mod:`anatomy.cost`'s).

Skipping the tiles above the causal diagonal halves the attention-score work (``QK^T`` and ``PV``). That
is a saving on one part of the model; this module counts every part, so the saving can be stated as a
share of the whole forward pass. Conventions (those of Hoffmann et al. 2022, Appendix F, and of the
FlashAttention papers; Kaplan et al. 2020, Table 1, count attention as ``2 * n_ctx * d_attn`` per token and
layer, half of the full-mask count below, i.e. the causal average):

* a multiply-add is 2 FLOPs; only matmuls are counted. Norms, RoPE, activations and the softmax's
  exponentials are O(N * d) or O(N^2 * heads) element-wise operations, a few percent at most, and left
  out (they are not what tile skipping changes);
* per token and layer, the projections cost ``2 * (parameters of the layer's matrices)``; attention
  scores and values cost ``4 * head_dim * n_heads`` per visible (query, key) pair;
* the LM head (``2 * d_model * vocab`` per token) is part of the forward pass; embedding lookups are free.

A causal mask is counted three ways: ``"dense"`` (the full N x N square, what a kernel without tile
skipping computes), ``"tiles"`` (whole tiles, as :func:`anatomy.masks.count_tiles` classifies them) and
``"ideal"`` (only
the N(N+1)/2 visible pairs).

The timing helpers at the end measure what the counts predict: variants are interleaved within each
repeat (so that load from other jobs on a shared machine hits all of them alike), threads are pinned, and
medians are reported. Wall-clock numbers are noisy; the counts are exact.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from anatomy._checks import check_bool, check_choice, check_instance, check_positive_int
from anatomy.cost import attention_pairs, forward_flops, published_config, tile_walk
from anatomy.masks import MASKS
from anatomy.model import Config
from anatomy.timing import interleaved_times

__all__ = [
    "CONTEXTS",
    "PRESETS",
    "attention_traffic",
    "draw_tile_map",
    "causal_saving",
    "sdpa_cpu_tiles",
    "time_attention",
    "time_forward",
]


# The three models of the chapter's table (their shapes from anatomy.cost's published configurations), and
# the context each was pretrained with (SmolLM2 2k, Llama 3 8k, GPT-3 2k).
PRESETS = {name: published_config(name) for name in ("SmolLM2-135M", "Llama-3-70B", "GPT-3 175B")}
CONTEXTS = {"SmolLM2-135M": 2048, "Llama-3-70B": 8192, "GPT-3 175B": 2048}


def sdpa_cpu_tiles(n_queries: int) -> tuple[int, int]:
    """The (query block, key block) sizes of PyTorch's CPU flash-attention kernel for this many queries.

    From ``aten/src/ATen/native/cpu/FlashAttentionKernel.cpp`` (PyTorch 2.x): key blocks of 512, query
    blocks of 256 (>= 768 queries), 64 (>= 192) or 32. With ``is_causal`` it stops each query block at
    its last row's key, so the causal saving is set by this grid: nothing below 512 keys.
    """
    check_positive_int("n_queries", n_queries)
    return (256 if n_queries >= 768 else 64 if n_queries >= 192 else 32), 512


def causal_saving(
    config: Config, n_ctx: int, *, counting: str = "ideal", tile: int = 128, lm_head: bool = True
) -> float:
    """Share of a whole bidirectional forward pass that a causal mask saves: 1 - F_causal / F_full
    (:func:`anatomy.cost.forward_flops`, attention pairs counted as ``counting`` says)."""
    check_positive_int("n_ctx", n_ctx)
    logits = "all" if check_bool("lm_head", lm_head) else "none"
    full = forward_flops(config, n_ctx, mask="bidirectional", logits=logits)["total"]
    causal = forward_flops(config, n_ctx, mask="causal", counting=counting, tile=tile, logits=logits)["total"]
    return 1.0 - causal / full


def attention_traffic(
    mask: str,
    n_ctx: int,
    head_dim: int,
    *,
    tile: int = 128,
    itemsize: int = 2,
    n_heads: int = 1,
    prefix_len: int | None = None,
) -> dict[str, float]:
    """FLOPs and bytes a tiled (FlashAttention-style) forward kernel moves for one sequence.

    Each program keeps one query tile on chip, reads the key and value tiles it visits, writes its output
    tile and log-sum-exp. So HBM bytes = Q + O (once) + K and V once per visited tile. Returns
    ``{"flops", "bytes", "intensity"}`` (intensity in FLOP per byte).
    """
    for name, value in (
        ("n_ctx", n_ctx),
        ("head_dim", head_dim),
        ("tile", tile),
        ("itemsize", itemsize),
        ("n_heads", n_heads),
    ):
        check_positive_int(name, value)
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if mask == "bidirectional":
        visited, pairs = (-(-n_ctx // tile)) ** 2, n_ctx * n_ctx
    else:
        pairs = attention_pairs(mask, n_ctx, counting="tiles", tile=tile, prefix_len=prefix_len)
        visited = tile_walk(n_ctx, tile, tile, prefix_len if mask == "prefix" else 0)[0]
    flops = 4 * head_dim * n_heads * pairs
    kv_bytes = visited * 2 * tile * head_dim * itemsize * n_heads  # a K and a V tile per visited tile
    qo_bytes = 2 * n_ctx * head_dim * itemsize * n_heads + 4 * n_ctx * n_heads  # Q in, O out, fp32 lse
    total = kv_bytes + qo_bytes
    return {"flops": float(flops), "bytes": float(total), "intensity": flops / total}


# ---------------------------------------------------------------------------------------------- figure


def draw_tile_map(
    ax, mask: str, n_ctx: int, *, tile: int, prefix_len: int | None = None, title: str | None = None
):
    """Draw the (query tile, key tile) grid of one mask: full, partial and empty tiles, and the mask's edge.

    Colours and names are those of :mod:`anatomy.book.plots` (the three-families chapter draws small masks
    cell by cell; this draws one rectangle per tile, so it stays fast for thousands of positions). Returns the
    tile map.
    """
    import matplotlib.patches as patches
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    from anatomy.book.plots import TILE_COLORS
    from anatomy.masks import EMPTY, FULL, PARTIAL, tile_map

    tmap = tile_map(mask, n_ctx, n_ctx, tile=tile, q_offset=0, prefix_len=prefix_len)
    cmap = ListedColormap([TILE_COLORS[EMPTY], TILE_COLORS[PARTIAL], TILE_COLORS[FULL]])
    ax.imshow(
        tmap.numpy(),
        cmap=cmap,
        vmin=-0.5,
        vmax=2.5,
        interpolation="nearest",
        extent=(0, tmap.shape[1] * tile, tmap.shape[0] * tile, 0),
    )
    edges = [min(i * tile, n_ctx) for i in range(max(tmap.shape) + 1)]  # tile borders, one collection
    lines = [[(0, e), (n_ctx, e)] for e in edges] + [[(e, 0), (e, n_ctx)] for e in edges]
    ax.add_collection(LineCollection(lines, colors="#999999", linewidths=0.4))
    if mask != "bidirectional":  # the edge of the visible region: keys < max(prefix_len, q + 1)
        p = prefix_len if mask == "prefix" else 0
        xs = [p, p, n_ctx] if p > 0 else [0, n_ctx]
        ys = [0, p, n_ctx] if p > 0 else [0, n_ctx]
        ax.plot(xs, ys, color="#222222", linewidth=1.2)
    ax.add_patch(patches.Rectangle((0, 0), n_ctx, n_ctx, fill=False, edgecolor="#333333", linewidth=1.0))
    ax.set_xlim(0, n_ctx)
    ax.set_ylim(n_ctx, 0)
    ax.grid(False)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if title:
        ax.set_title(title)
    return tmap


def time_attention(
    sizes: Sequence[int],
    variants: Mapping[str, dict],
    *,
    heads: int = 8,
    kv_heads: int = 8,
    head_dim: int = 64,
    tile: int = 128,
    repeats: int = 5,
    threads: int | None = 1,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    clock: str = "wall",
) -> list[dict]:
    """Time ``anatomy.attention`` for each sequence length and variant (a dict of keyword arguments).

    ``variants`` maps a name to ``attention`` keywords, e.g. ``{"tiled causal": dict(mask="causal",
    backend="tiled")}``. Returns one row per size: ``{"n": N, name: median seconds, ..., "times": {name:
    seconds of every repeat}}`` (pass two variants' ``times`` to :func:`paired_ratio`). Batch 1,
    self-attention (Nq = Nk = N).
    """
    from anatomy.attention import attention

    if not variants:
        raise ValueError("variants must name at least one configuration to time")
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of ints, got {type(sizes).__name__}")
    if not sizes:
        raise ValueError("sizes must hold at least one sequence length")
    for name, value in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        check_positive_int(name, value)
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    rows = []
    g = torch.Generator().manual_seed(seed)
    for n in sizes:
        check_positive_int("size", n)
        q = torch.randn(1, heads, n, head_dim, generator=g).to(device=device, dtype=dtype)
        k, v = (
            torch.randn(1, kv_heads, n, head_dim, generator=g).to(device=device, dtype=dtype)
            for _ in range(2)
        )
        fns = {
            name: (lambda kw=kw, q=q, k=k, v=v: attention(q, k, v, tile=tile, **kw))
            for name, kw in variants.items()
        }
        times = interleaved_times(fns, repeats=repeats, threads=threads, clock=clock)
        rows.append({"n": n, **{name: statistics.median(ts) for name, ts in times.items()}, "times": times})
    return rows


def time_forward(
    config,
    sizes: Sequence[int],
    *,
    masks: Sequence[str] = ("causal", "bidirectional"),
    repeats: int = 3,
    threads: int | None = 1,
    seed: int = 0,
    clock: str = "wall",
) -> list[dict]:
    """Time one forward pass of an anatomy ``Transformer`` per mask and sequence length (batch 1).

    The models for the different masks share one set of weights (the mask is the only difference). Each
    row: ``{"n": N, mask: median seconds, ..., "times": {mask: seconds of every repeat}, "counted_" + mask:
    FLOPs as :func:`anatomy.cost.forward_flops` counts them for the model's kernel}`` (``counting="tiles"``
    for the tiled and Triton backends, ``"dense"`` otherwise).
    """
    from anatomy.model import Transformer

    if not masks:
        raise ValueError("masks must name at least one mask")
    check_instance("config", config, Config, "an anatomy Config")
    for m in masks:
        check_choice("masks", m, ("causal", "bidirectional", "prefix"))
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__") or not sizes:
        raise ValueError(f"sizes must be a non-empty sequence of ints, got {sizes!r}")
    torch.manual_seed(seed)
    base = Transformer(replace(config, mask=masks[0])).eval()
    models = {masks[0]: base}
    for m in masks[1:]:
        models[m] = Transformer(replace(config, mask=m)).eval()
        models[m].load_state_dict(base.state_dict())
    counting = "tiles" if config.attn_backend in ("tiled", "triton") else "dense"
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        check_positive_int("size", n)
        if n > config.max_seq_len and config.pos == "learned":
            raise ValueError(f"size {n} exceeds the model's max_seq_len {config.max_seq_len}")
        ids = torch.randint(0, config.vocab_size, (1, n), generator=g)
        prefix = {m: (dict(prefix_len=n // 2) if m == "prefix" else {}) for m in masks}
        fns = {m: (lambda m=m, ids=ids, kw=prefix[m]: models[m](ids, **kw)) for m in masks}
        times = interleaved_times(fns, repeats=repeats, threads=threads, clock=clock)
        row = {"n": n, **{m: statistics.median(ts) for m, ts in times.items()}, "times": times}
        for m in masks:
            row["counted_" + m] = forward_flops(
                config, n, mask=m, counting=counting, tile=config.tile, prefix_len=prefix[m].get("prefix_len")
            )["total"]
        rows.append(row)
    return rows
