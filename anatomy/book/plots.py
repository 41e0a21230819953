"""Figures shared by several chapters: masks with their tile classes, and where hidden states changed.

All drawing goes through the book's style (:mod:`anatomy.book`); every function takes a Matplotlib
``Axes`` and returns it, so chapters compose them into their own figures.
"""

from __future__ import annotations

import matplotlib
import matplotlib.patches as patches
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, LogNorm

from anatomy._checks import check_float, check_instance, check_positive_int
from anatomy.book import COLORS
from anatomy.masks import EMPTY, FULL, PARTIAL, dense_mask, tile_map

TILE_COLORS = {EMPTY: "#ffffff", PARTIAL: "#f2c14e", FULL: "#7fb3d5"}
TILE_NAMES = {EMPTY: "empty: skipped", PARTIAL: "partial: masked inside", FULL: "full: no mask needed"}


def _as_image(name: str, value) -> np.ndarray:
    """A 2-D float array of ``value`` (a tensor or an array), refused naming ``name`` otherwise."""
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a 2-D tensor or array, got {type(value).__name__}")
    image = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {image.shape}")
    return image


def draw_visibility(
    ax: Axes,
    visible: torch.Tensor | np.ndarray,
    color: str = COLORS["causal"],
    title: str | None = None,
    split: int | None = None,
    labels: tuple[str, str] = ("key", "query"),
) -> Axes:
    """Draw a boolean (queries, keys) matrix: filled cells may attend. ``split`` draws a divider line."""
    check_instance("ax", ax, Axes, "a matplotlib Axes")
    vis = _as_image("visible", visible)
    ax.imshow(vis, cmap=ListedColormap(["#ffffff", color]), vmin=0, vmax=1, interpolation="nearest")
    nq, nk = vis.shape
    ax.grid(which="major", visible=False)
    if max(nq, nk) <= 32:  # a cell grid only where cells are big enough to see (and cheap to draw)
        ax.set_xticks(np.arange(-0.5, nk, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, nq, 1), minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    ax.set_xlabel(f"{labels[0]} position")
    ax.set_ylabel(f"{labels[1]} position")
    if split is not None:
        ax.axvline(split - 0.5, color="#333333", linewidth=1.2, linestyle="--")
        ax.axhline(split - 0.5, color="#333333", linewidth=1.2, linestyle="--")
    if title:
        ax.set_title(title)
    return ax


def draw_mask(
    ax: Axes,
    mask: str,
    n_queries: int,
    n_keys: int | None = None,
    *,
    prefix_len: int | None = None,
    q_offset: int | None = None,
    tile: int | None = None,
    color: str | None = None,
    title: str | None = None,
) -> Axes:
    """Draw one of anatomy's masks; with ``tile``, shade each tile by its class (empty/partial/full)."""
    check_instance("ax", ax, Axes, "a matplotlib Axes")
    check_positive_int("n_queries", n_queries)
    check_positive_int("n_keys", n_keys, none=True)
    check_positive_int("tile", tile, none=True)
    n_keys = n_queries if n_keys is None else n_keys
    vis = dense_mask(mask, n_queries, n_keys, q_offset=q_offset, prefix_len=prefix_len)
    draw_visibility(ax, vis, color or COLORS[mask], title, split=prefix_len if mask == "prefix" else None)
    if tile is not None:
        tmap = tile_map(mask, n_queries, n_keys, tile=tile, q_offset=q_offset, prefix_len=prefix_len)
        for (i, j), kind in np.ndenumerate(tmap.numpy()):
            ax.add_patch(
                patches.Rectangle(
                    (j * tile - 0.5, i * tile - 0.5),
                    min(tile, n_keys - j * tile),
                    min(tile, n_queries - i * tile),
                    fill=kind != EMPTY,
                    facecolor=TILE_COLORS[kind],
                    alpha=0.35,
                    edgecolor="#333333",
                    linewidth=1.0,
                )
            )
    return ax


def tile_legend(ax: Axes) -> None:
    """A legend for the tile classes drawn by :func:`draw_mask`."""
    check_instance("ax", ax, Axes, "a matplotlib Axes")
    handles = [
        patches.Patch(facecolor=TILE_COLORS[k], edgecolor="#333333", alpha=0.6, label=TILE_NAMES[k])
        for k in (FULL, PARTIAL, EMPTY)
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1, frameon=False)


def draw_change(
    ax: Axes,
    delta: torch.Tensor | np.ndarray,
    edited: int | None = None,
    title: str | None = None,
    vmin: float = 1e-4,
    vmax: float = 1.0,
    colorbar: bool = True,
):
    """Heatmap of how much hidden states changed: delta (layers, positions), on a log colour scale.

    Exact zeros (and anything below ``vmin``) are white, so "unchanged" is visible at a glance; ``edited``
    marks the edited position. Returns the image (for a shared colorbar).
    """
    check_instance("ax", ax, Axes, "a matplotlib Axes")
    d = _as_image("delta", delta)
    check_float("vmin", vmin, lo=0, lo_open=True)
    check_float("vmax", vmax, lo=vmin, lo_open=True)
    cmap = matplotlib.colormaps["magma_r"].copy()
    cmap.set_under("white")
    im = ax.imshow(
        np.where(d > 0, d, vmin / 10),
        aspect="auto",
        cmap=cmap,
        norm=LogNorm(vmin=vmin, vmax=vmax),
        interpolation="nearest",
        origin="lower",
    )
    ax.grid(False)
    ax.set_xlabel("position")
    ax.set_ylabel("layer (0 = embeddings)")
    ax.set_yticks(range(d.shape[0]))
    if edited is not None:
        ax.axvline(edited, color=COLORS["prefix"], linewidth=1.5, linestyle="--")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02, extend="min")
    return im
