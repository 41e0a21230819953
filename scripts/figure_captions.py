#!/usr/bin/env python3
"""Give the figures that have no caption paragraph a caption and alt text, as notebook cell metadata.

Most figures in the chapters are followed by a paragraph that reads as a caption (all in italics, or with a
"*What to see:*" part); at build time ``_ext/publish.py`` moves that paragraph into a numbered figure and
takes the alt text from its first sentence. The figures below have no such paragraph, so their cells carry
the caption and the alt text themselves, in the metadata myst-nb reads::

    "metadata": {"mystnb": {"figure": {"caption": "...", "name": "fig-01-masks"}, "image": {"alt": "..."}}}

    python3 scripts/figure_captions.py            # write the metadata into chapters/*.ipynb
    python3 scripts/figure_captions.py --check    # exit 1 if a cell lacks it (or a listed cell is gone)

Captions say what the figure shows and what to look at, never a measured number (numbers are glued into the
text). Standard library only; the notebooks keep their cell ids, other metadata and stored layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# chapter -> cell id -> (name, alt text, caption)
FIGURES: dict[str, dict[str, tuple[str, str, str]]] = {
    "chapters/01_three_families.ipynb": {
        "f74122e2": (
            "fig-01-masks",
            "Four square grids of cells, one per family: a filled lower triangle for the decoder, a fully "
            "filled square for the encoder, and for the prefix LM and the encoder-decoder a filled block "
            "over the first columns with a triangle after it.",
            "Who may attend to whom in each family, for 12 tokens: a filled cell in row *i*, column *j* "
            "means that query *i* sees key *j*. The decoder sees only the past, the encoder sees "
            "everything, and the prefix LM and the encoder-decoder see the whole prefix (the source) and "
            "the past after it.",
        ),
        "cc1c9ae3": (
            "fig-01-mask-explorer",
            "An attention mask drawn as a grid of cells, divided into tiles, with the number of tiles a "
            "kernel has to compute written under it.",
            "Explore the masks: choose the family, the number of tokens *N* and the prefix length. The "
            "thicker lines divide the mask into the tiles a tiled kernel works on; the label under the "
            "mask counts the tiles it has to compute, which chapter 8 turns into time.",
        ),
        "ad0f3070": (
            "fig-01-training",
            "Three training-loss curves falling over 250 training steps, one each for the decoder, the "
            "encoder and the prefix LM.",
            "The training loss of the three small models, each with its own objective, on the same "
            "characters for the same number of steps. All three learn; the values are not comparable "
            "across objectives, because each objective predicts different characters.",
        ),
        "0a1de968": (
            "fig-01-edit",
            "Three heatmaps of relative change, layers by positions, for the decoder, the encoder and the "
            "prefix LM, with a dashed line at the edited position.",
            "Which hidden states move when one character (the dashed line) is replaced: the relative change "
            "of every position's hidden state, at every layer. White cells changed by less than 1e-4. In "
            "the decoder nothing left of the edit moves; in the encoder everything does.",
        ),
        "8089c8dc": (
            "fig-01-append",
            "Relative change of a prompt's hidden states against the layer, on a log scale, for SmolLM2 "
            "and for MiniLM.",
            "Appending text to a prompt: how much the prompt's own hidden states change, layer by layer, in "
            "the decoder SmolLM2 and the encoder MiniLM (a change of exactly zero is drawn at 1e-12).",
        ),
    },
    "chapters/02_entropy_chain_rule.ipynb": {
        "28e35de8": (
            "fig-02-context-explorer",
            "Training and held-out loss of a count model against the number of training tokens, with "
            "horizontal lines for the entropy rate and for the floor of its context length.",
            "Training and held-out loss of a count model that sees the last *k* tokens, against the amount "
            "of training text, with the entropy rate and the floor for context *k*. Move the slider to "
            "change *k*.",
        )
    },
    "chapters/03_capacity_compression.ipynb": {
        "b8bac4a5": (
            "fig-03-scaling-explorer",
            "Held-out loss against the number of parameters on log-log axes, with a fitted line, at one "
            "training checkpoint.",
            "The scaling fit at each checkpoint of training: move the slider to see the models' held-out "
            "losses, and the power law fitted through them, as training goes on.",
        )
    },
    "chapters/04_attention_rank.ipynb": {
        "c17": (
            "fig-04-gram-explorer",
            "Two token-by-token heatmaps, causal and bidirectional, of how far apart the tokens' directions "
            "are at one depth.",
            "How far apart the tokens' directions are, for every pair of tokens (log10 of one minus their "
            "cosine; dark means identical up to float64 rounding), causal on the left and bidirectional on "
            "the right. Choose the variant of the block and the depth: a uniformly dark matrix is a "
            "collapsed representation.",
        ),
        "c23": (
            "fig-04-heads-explorer",
            "A grid of attention maps, one per head of one layer, each with queries as rows and keys as "
            "columns.",
            "Every head's attention in the first, middle or last layer of SmolLM2 (causal) and MiniLM "
            "(bidirectional), on the same paragraph: rows are queries, columns are keys. Choose the model "
            "and the layer.",
        ),
    },
    "chapters/05_order_without_positions.ipynb": {
        "c16": (
            "fig-05-attention-explorer",
            "A grid of attention maps, one per head, of a small trained causal model, with queries as rows "
            "and keys as columns.",
            "What the two trained causal models attend to, head by head, without a position encoding and "
            "with RoPE: rows are queries, columns are keys. Choose the model and the layer.",
        )
    },
    "chapters/08_causal_kernel.ipynb": {
        "960a48e3": (
            "fig-08-tiles-explorer",
            "Three masks, causal, bidirectional and prefix, divided into tiles coloured as empty, partial "
            "or full, with the count of each kind under each mask.",
            "The tiles a tiled kernel visits for the causal, bidirectional and prefix masks: empty tiles "
            "are skipped, partial tiles are computed and masked, full tiles are computed as they are. "
            "Choose the number of tokens, the tile size and the prefix's share.",
        ),
        "915f89ca": (
            "fig-08-share",
            "The share of the attention square computed by a causal kernel against the sequence length, "
            "for three tile sizes, for PyTorch's CPU kernel and for the exact triangle.",
            "The share of the attention square that a causal kernel computes, counted, against the number "
            "of tokens: our tiled kernel with tiles of 32, 64 and 128, PyTorch's CPU SDPA on its own block "
            "grid, and the exact lower triangle, (N+1)/2N. The tiled kernel approaches the triangle as the "
            "sequence grows or the tiles shrink.",
        ),
        "3924409b": (
            "fig-08-timing",
            "Left: time per attention call against the sequence length for four kernels. Right: the "
            "causal-to-full time ratio of two kernels, measured and counted.",
            "Left: the time of one attention call on one CPU thread, for our tiled kernel and PyTorch's "
            "SDPA, each causal and full. Right: what the causal mask saves, as the causal/full time ratio, "
            "measured (solid) and counted (dotted), for each kernel.",
        ),
        "97b97555": (
            "fig-08-forward-share",
            "Curves of the share of a forward pass that the causal mask saves against the context length, "
            "one per model shape, with a dot at each model's pretraining context, and the small model's "
            "measured points.",
            "The share of a whole forward pass that the causal mask saves, counted, against the context "
            "length, for published model shapes (dots: each model's pretraining context) and for the small "
            "model timed in this chapter (measured).",
        ),
    },
    "chapters/09_kv_cache.ipynb": {
        "c011": (
            "fig-09-kv-explorer",
            "Horizontal bars of KV-cache size in gigabytes for one published model with multi-head, "
            "grouped-query and multi-query attention, and by seed 002's formula.",
            "The KV cache of one sequence in fp16 for a published model, had it used multi-head, "
            "grouped-query or multi-query attention (its own kind in the darker blue), and what seed 002's "
            "formula gives. Choose the model and the context length.",
        )
    },
}


def _dumps(nb: dict) -> str:
    """The stored layout of scripts/strip_outputs.py (one-space indent, sorted keys, final newline)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def apply(nb: dict, figures: dict[str, tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    """Write the metadata into `nb`; return (cells changed, listed cells not found)."""
    cells = {c.get("id"): c for c in nb.get("cells", [])}
    changed, missing = [], []
    for cell_id, (name, alt, caption) in figures.items():
        cell = cells.get(cell_id)
        if cell is None or cell.get("cell_type") != "code":
            missing.append(cell_id)
            continue
        meta = cell.setdefault("metadata", {})
        mystnb = meta.get("mystnb", {})
        want = dict(
            mystnb,
            figure=dict(mystnb.get("figure", {}), caption=caption, name=name),
            image=dict(mystnb.get("image", {}), alt=alt),
        )
        if mystnb != want:
            meta["mystnb"] = want
            changed.append(cell_id)
    return changed, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is missing")
    args = parser.parse_args(argv)
    status = 0
    for rel, figures in FIGURES.items():
        path = ROOT / rel
        if not path.exists():
            print(f"{rel}: not found")
            status = 1
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        changed, missing = apply(nb, figures)
        for cell_id in missing:
            print(f"{rel}: no code cell with id {cell_id} (update FIGURES in {Path(__file__).name})")
            status = 1
        if changed:
            if args.check:
                print(f"{rel}: cells without their caption and alt text: {', '.join(changed)}")
                status = 1
            else:
                path.write_text(_dumps(nb), encoding="utf-8")
                print(f"{rel}: captions and alt text for {', '.join(changed)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
