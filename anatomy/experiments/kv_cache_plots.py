"""The KV cache chapter's figures and tables: KV sizes, the chunk sweep, the multi-turn dialogue, the stale
cache. The results they draw come from :mod:`anatomy.experiments.kv_cache`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from anatomy.cache import kv_cache_bytes
from anatomy.cost import attention_kind, published_config
from anatomy.experiments.kv_cache import STRATEGIES, seed002_kv_bytes_per_token

__all__ = [
    "chunk_sweep_table",
    "dialogue_table",
    "kv_sizes_table",
    "plot_chunk_sweep",
    "plot_dialogue",
    "plot_kv_variants",
    "plot_stale",
    "stale_table",
]

_STRATEGY_STYLES = {"reuse": "o-", "recompute": "s--", "prefix": "^-", "encdec": "D-"}


def _plain_log_ticks(axis) -> None:
    """Log-scale ticks at 1, 2, 5 x 10^k labelled as plain numbers (0.5, 2, 30), no minor labels."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(plt.NullFormatter())


def chunk_sweep_table(sweep: Mapping) -> str:
    """An HTML table of a :func:`chunk_sweep` result: per chunk size, time per call and per token, counted
    GFLOP and MB, FLOP per byte and the achieved GFLOP/s."""
    from anatomy.book.tables import html_table

    rows = [
        (
            n,
            f"{1e3 * s:.1f}",
            f"{1e3 * t:.2f}",
            f"{f / 1e9:.2f}",
            f"{b / 1e6:.0f}",
            f"{i:.1f}",
            f"{a / 1e9:.1f}",
        )
        for n, s, t, f, b, i, a in zip(
            sweep["chunk"],
            sweep["seconds"],
            sweep["per_token"],
            sweep["flops"],
            sweep["bytes"],
            sweep["intensity"],
            sweep["achieved"],
        )
    ]
    return html_table(
        [
            "new tokens per call",
            "ms per call",
            "ms per token",
            "GFLOP per call",
            "MB moved per call",
            "FLOP per byte",
            "achieved GFLOP/s",
        ],
        rows,
    )


def plot_chunk_sweep(sweep: Mapping):
    """Left: the measured time per token of a :func:`chunk_sweep` against the tokens per call; right: the
    counted arithmetic intensity. Log axes with plain tick labels. Returns the figure."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].loglog(sweep["chunk"], [1e3 * t for t in sweep["per_token"]], "o-", color=COLORS["causal"])
    axes[0].set_xlabel("new tokens per forward call (1 = one decode step)")
    axes[0].set_ylabel("milliseconds per token")
    axes[0].set_title("Time per token: measured")
    axes[1].loglog(sweep["chunk"], sweep["intensity"], "s-", color=COLORS["causal"], label="counted")
    axes[1].set_xlabel("new tokens per forward call")
    axes[1].set_ylabel("FLOPs per byte moved")
    axes[1].set_title("Arithmetic intensity: counted")
    for ax in axes:
        ax.set_xticks(sweep["chunk"], [str(n) for n in sweep["chunk"]])
        _plain_log_ticks(ax.yaxis)
    fig.tight_layout()
    return fig


def kv_sizes_table(rows: Sequence[Mapping]) -> str:
    """An HTML table of :func:`kv_table` rows (fp16 sizes in MB per token and GB in all)."""
    from anatomy.book.tables import html_table

    return html_table(
        [
            "model",
            "attention",
            "layers",
            "query / KV heads",
            "head dim",
            "KV per token",
            "at 8,192 tokens",
            "if it were MHA",
            "seed 002's formula",
            "seed 002 / ours",
        ],
        [
            (
                r["model"],
                r["kind"],
                r["layers"],
                f"{r['q_heads']} / {r['kv_heads']}",
                r["head_dim"],
                f"{r['per_token'] / 1e6:.3f} MB",
                f"{r['total'] / 1e9:.2f} GB",
                f"{r['mha_per_token'] / 1e6:.3f} MB",
                f"{r['seed002_per_token'] / 1e6:.3f} MB",
                f"{r['seed002_over_ours']:.0f}x",
            )
            for r in rows
        ],
    )


def plot_kv_variants(model_name: str, context: int):
    """Horizontal bars: the fp16 KV cache of one sequence of ``context`` tokens for the published model
    ``model_name`` had it used MHA, GQA (its own KV heads, else 8) or MQA, its own kind in the book's blue,
    and what seed 002's formula gives. The render function of the KV cache chapter's explorer. Returns the
    figure."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    c = published_config(model_name)
    kind = attention_kind(c)
    gqa_heads = c.n_kv_heads if kind == "GQA" else 8
    variants = {"MHA": c.n_heads, f"GQA ({gqa_heads} KV heads)": gqa_heads, "MQA": 1}
    actual = {"MHA": "MHA", "MQA": "MQA"}.get(kind, f"GQA ({gqa_heads} KV heads)")
    names = list(variants) + ["seed 002's formula"]
    gb = [kv_cache_bytes(c.n_layers, h, c.head_dim, context, 2) / 1e9 for h in variants.values()]
    gb.append(seed002_kv_bytes_per_token(c.n_layers, c.d_model, 2) * context / 1e9)
    fig, ax = plt.subplots(figsize=(7, 3.0))
    colors = [COLORS["causal"] if n == actual else "#bcd3e6" for n in variants] + ["#bbbbbb"]
    bars = ax.barh(names[::-1], gb[::-1], color=colors[::-1], edgecolor="#333333", linewidth=0.6)
    for bar, g in zip(bars, gb[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {g:,.2f} GB", va="center", fontsize=9)
    ax.set_xlim(0, max(gb) * 1.35)
    ax.set_xlabel(f"KV cache for one sequence of {context:,} tokens (GB, fp16)")
    ax.set_title(f"{model_name}: {c.n_layers} layers, {c.n_heads} query heads of size {c.head_dim}")
    fig.tight_layout()
    return fig


def dialogue_table(ttft: Mapping, flops: Mapping) -> str:
    """An HTML table of :func:`dialogue_ttft` and :func:`dialogue_flops`: per turn, the tokens so far, the
    new tokens, and each strategy's time to first token and GFLOP."""
    from anatomy.book.tables import html_table

    keys = [k for k in STRATEGIES if k in ttft["ttft"]]
    rows = [
        (
            t + 1,
            ttft["history"][t],
            ttft["new"][t],
            *(f"{ttft['ttft'][k][t]:.2f} s / {flops[k][t] / 1e9:.0f}" for k in keys),
        )
        for t in range(len(ttft["history"]))
    ]
    header = ["turn", "tokens so far", "new tokens", *(f"{STRATEGIES[k]}: TTFT / GFLOP" for k in keys)]
    return html_table(header, rows)


def plot_dialogue(ttft: Mapping, flops: Mapping):
    """Left: the measured time to first token per turn of each strategy (:func:`dialogue_ttft`); right: the
    counted GFLOP behind each point (:func:`dialogue_flops`). Returns the figure."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    colors = {
        "reuse": COLORS["causal"],
        "recompute": "#56B4E9",
        "prefix": COLORS["prefix"],
        "encdec": COLORS["encdec"],
    }
    turns = range(1, len(ttft["history"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4))
    for k, label in STRATEGIES.items():
        if k not in ttft["ttft"]:
            continue
        axes[0].plot(turns, ttft["ttft"][k], _STRATEGY_STYLES[k], color=colors[k], label=label)
        axes[1].plot(turns, [f / 1e9 for f in flops[k]], _STRATEGY_STYLES[k], color=colors[k], label=label)
    axes[0].set_ylabel("time to first token (s, this CPU)")
    axes[1].set_ylabel("GFLOP to the first token (counted)")
    for ax in axes:
        ax.set_xlabel("turn")
        ax.set_xticks(list(turns))
        ax.set_ylim(bottom=0)
    axes[0].legend()
    fig.tight_layout()
    return fig


def stale_table(stale: Mapping[str, Mapping]) -> str:
    """An HTML table of :func:`stale_cache_error` results, one row per model name."""
    from anatomy.book.tables import html_table

    return html_table(
        [
            "model",
            "history keys changed (max over layers)",
            "values changed",
            "largest logit error",
            "KL(fresh || stale), nats",
            "argmax changed",
            "loss fresh / stale",
        ],
        [
            (
                name,
                f"{max(r['key_change']):.1%}",
                f"{max(r['value_change']):.1%}",
                f"{r['max_logit_err']:.2g}",
                f"{r['kl']:.1e}",
                f"{r['flips']:.1%}",
                f"{r['loss_fresh']:.3f} / {r['loss_stale']:.3f}",
            )
            for name, r in stale.items()
        ],
    )


def plot_stale(stale: Mapping[str, Mapping], names: Sequence[str] | None = None):
    """The relative change of the cached keys and values per layer (:func:`stale_cache_error`) of two
    models (``names``, default the first two of ``stale``): the first in the decoder's colour, the second in
    the prefix LM's; values paler than keys. Returns the figure."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    names = list(stale)[:2] if names is None else list(names)
    if len(names) != 2 or any(n not in stale for n in names):
        raise ValueError(f"names must be two keys of stale, got {names!r}")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for name, color, style in zip(names, [COLORS["causal"], COLORS["prefix"]], ["o-", "^-"]):
        r = stale[name]
        ax.plot(
            range(1, len(r["key_change"]) + 1), r["key_change"], style, color=color, label=f"{name}: keys"
        )
        ax.plot(
            range(1, len(r["value_change"]) + 1),
            r["value_change"],
            style,
            color=color,
            alpha=0.45,
            label=f"{name}: values",
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("relative change of the cached history")
    ax.set_title("When the context grows, which cached keys and values go stale?")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig
