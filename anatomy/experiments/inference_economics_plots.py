"""The inference economics chapter's figures and tables: the roofline, seed 002's latency table, decode
bytes per model, the classifiers, when speculative decoding pays, and the speculative sampler's output
distribution. The results they draw come from :mod:`anatomy.experiments.inference_economics`,
:mod:`anatomy.experiments.encoder_niche` and :mod:`anatomy.speculative`."""

from __future__ import annotations

from collections.abc import Sequence

from anatomy._checks import check_instance, check_int
from anatomy.cost import step_bytes
from anatomy.experiments.encoder_niche import CLASSIFIERS
from anatomy.experiments.inference_economics import Hardware, roofline

__all__ = [
    "classifier_table",
    "decode_bytes_table",
    "latency_table",
    "plot_classifiers",
    "plot_roofline",
    "plot_sampler_distributions",
    "plot_speculative",
]


def latency_table(rows: Sequence[dict]) -> str:
    """An HTML table of :func:`seed002_latency_rows`: the seed's table, its function, its KV formula with a
    real configuration, and the roofline estimate with weight reads."""
    from anatomy.book.tables import html_table

    cells = []
    for r in rows:
        own, est = r["own"], r["est"]
        cells.append(
            (
                f"{r['name']}, {r['n_in']} in, {r['n_out']} out",
                f"{r['table_prefill_ms']:g} / {r['table_decode_ms']:g}",
                f"{own['prefill_ms']:.1f} / {own['decode_ms']:.0f} ({own['n_layers']} layers)",
                f"{own['prefill_ms'] / r['table_prefill_ms']:.2f}",
                f"{r['kv_decode_ms']:.0f}",
                f"{est['prefill_ms']:.1f} / {est['decode_ms']:,.0f}",
                f"{est['weights_gb']:.0f}",
            )
        )
    return html_table(
        [
            "row",
            "seed 002's table: prefill / decode (ms)",
            "seed 002's function as written (ms)",
            "prefill: function / table",
            "decode with the seed's KV formula, real config (ms)",
            "roofline with weight reads: prefill / decode (ms)",
            "fp16 weights (GB)",
        ],
        cells,
    )


def plot_roofline(hardware: Hardware, prefills: dict, batched: dict):
    """SmolLM2's calls on the roofline of ``hardware``: the one-sequence calls of a
    :func:`~anatomy.experiments.kv_cache.chunk_sweep` (``prefills``, labelled by their new tokens) and the
    batched decode steps of :func:`batch_decode_sweep` (``batched``), with the ridge point. Log axes with
    plain tick labels. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import LogLocator

    from anatomy.book import COLORS

    check_instance("hardware", hardware, Hardware, "a Hardware")
    fig, ax = plt.subplots(figsize=(8, 4.6))
    x = np.logspace(-1, 3, 200)
    ax.loglog(
        x,
        roofline(x, hardware.peak_flops, hardware.bandwidth) / 1e9,
        color="#444444",
        linewidth=1.5,
        label="roofline (best FLOP rate and bandwidth measured here)",
    )
    ax.loglog(
        prefills["intensity"],
        [a / 1e9 for a in prefills["achieved"]],
        "o-",
        color=COLORS["causal"],
        label="SmolLM2, one sequence: 1, 4, 16, 64, 256 new tokens per call",
    )
    ax.loglog(
        batched["intensity"],
        [a / 1e9 for a in batched["achieved"]],
        "s",
        color="#E69F00",
        markersize=7,
        label="SmolLM2, one decode step for a batch of 4 and 16",
    )
    for n, i, a in zip(prefills["chunk"], prefills["intensity"], prefills["achieved"]):
        ax.annotate(f"{n}", (i, a / 1e9), textcoords="offset points", xytext=(4, -12), fontsize=9)
    ax.axvline(hardware.ridge, color="#999999", linestyle=":", linewidth=1)
    ax.text(
        hardware.ridge * 1.1, hardware.peak_flops / 1e9 * 0.05, "ridge point", color="#666666", fontsize=9
    )
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved, counted)")
    ax.set_ylabel("GFLOP/s (counted FLOPs / measured time)")
    ax.set_title("SmolLM2 on the roofline of this CPU")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers (0.5, 2, 30) instead of powers of ten
        axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(plt.NullFormatter())
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=9)
    return fig


def classifier_table(results: dict) -> str:
    """An HTML table of :func:`compare_classifiers`: per way, tokens, counted GFLOP and measured ms per
    sentence, and accuracy."""
    from anatomy.book.tables import html_table

    return html_table(
        [
            "method",
            "tokens run per sentence",
            "GFLOP per sentence (counted)",
            "ms per sentence (measured)",
            f"accuracy on {results['n_test']} sentences",
        ],
        [
            (
                k,
                f"{results[k]['tokens']:.0f}",
                f"{results[k]['flops'] / 1e9:.2f}",
                f"{1e3 * results[k]['seconds']:.0f}",
                f"{results[k]['accuracy']:.0%}",
            )
            for k in CLASSIFIERS
        ],
    )


def plot_classifiers(results: dict):
    """Left: measured milliseconds per sentence of each way of :func:`compare_classifiers` (log scale);
    right: its accuracy, with chance marked. MiniLM's ways in the encoder's colour. Returns the figure."""
    import matplotlib.pyplot as plt

    from anatomy.book import COLORS

    labels, n_test = results["labels"], results["n_test"]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.6), sharey=True, gridspec_kw={"width_ratios": [1.3, 1]})
    names = list(CLASSIFIERS)[::-1]
    colors = [COLORS["bidirectional"] if k.startswith("MiniLM") else COLORS["causal"] for k in names]
    axes[0].barh(names, [1e3 * results[k]["seconds"] for k in names], color=colors)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0].set_xlabel("milliseconds per sentence on this CPU (log scale)")
    axes[1].barh(names, [results[k]["accuracy"] for k in names], color=colors)
    axes[1].axvline(1 / len(labels), color="#777777", linestyle=":", linewidth=1.2)
    axes[1].text(1 / len(labels) + 0.01, len(names) - 0.6, "chance", color="#555555", fontsize=9)
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel(f"accuracy on {n_test} test sentences")
    fig.suptitle("Classifying sentences: MiniLM (vermillion) and SmolLM2 (blue)", y=1.0)
    fig.tight_layout()
    return fig


def decode_bytes_table(names: Sequence[str], context: int = 8192, prompt: int = 2048, batch: int = 64) -> str:
    """An HTML table, per published model (fp16 weights and cache): the weights and the KV cache of a
    ``context``-token sequence that one decode step reads, how many such sequences it takes before the cache
    outweighs the weights, and the FLOP per byte of a ``prompt``-token prefill and of decode steps at batch
    1 and ``batch`` (``prompt`` tokens of context)."""
    from anatomy.book.tables import html_table
    from anatomy.cost import kv_bytes_per_token, published_config, step_intensity

    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty sequence of published model names, got {names!r}")
    for name, value in (("context", context), ("prompt", prompt), ("batch", batch)):
        check_int(name, value, lo=1)
    rows = []
    for name in names:
        c = published_config(name)
        b1 = step_bytes(c, 1, context, weight_bytes=2, kv_bytes=2)
        rows.append(
            (
                name,
                f"{b1['weights'] / 1e9:.1f}",
                f"{b1['kv_read'] / 1e9:.2f}",
                f"{b1['weights'] / kv_bytes_per_token(c, 2) / context:.0f}",
                f"{step_intensity(c, prompt, 0, weight_bytes=2, kv_bytes=2, logits='last'):,.0f}",
                f"{step_intensity(c, 1, prompt, weight_bytes=2, kv_bytes=2):.2f}",
                f"{step_intensity(c, 1, prompt, batch=batch, weight_bytes=2, kv_bytes=2):.1f}",
            )
        )
    return html_table(
        [
            "model (fp16)",
            "weights read per decode step (GB)",
            f"KV cache read at {context:,} tokens (GB)",
            f"sequences of {context:,} tokens before the cache outweighs the weights",
            f"prefill {prompt:,} tokens: FLOP/byte",
            "decode, batch 1: FLOP/byte",
            f"decode, batch {batch}: FLOP/byte",
        ],
        rows,
    )


def plot_speculative(
    runs: dict, alpha_k: dict, c_k: dict, *, gamma_lookup: int, gamma_trunc: int, k_run: int, v_lookup: float
):
    """When speculative decoding pays: the expected speedup against the acceptance rate
    (:func:`anatomy.speculative.expected_speedup`) for prompt lookup (c = 0) with v = 1 and with the measured
    verification cost ``v_lookup``, and for the ``k_run``-block draft (c from bytes, ``c_k[k_run]``); the
    expected speedup of every truncated draft depth (``alpha_k``, ``c_k``: depth -> acceptance, byte ratio);
    and the measured runs (``runs``: (draft, prompt) -> dict with ``alpha`` and ``speedup``). Returns the
    figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from anatomy.book import COLORS
    from anatomy.speculative import expected_speedup

    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    a = np.linspace(0, 0.99, 100)
    curves = [
        (gamma_lookup, 0.0, 1.0, "prompt lookup (c = 0), v = 1", "#56B4E9", "--"),
        (gamma_lookup, 0.0, v_lookup, "prompt lookup (c = 0), measured v", COLORS["causal"], "-"),
        (gamma_trunc, c_k[k_run], 1.0, f"{k_run}-block draft, c from bytes, v = 1", COLORS["prefix"], "-"),
    ]
    for g, c, v, label, color, style in curves:
        ax.plot(
            a, [expected_speedup(x, g, c, v=v) for x in a], style, color=color, label=f"expected: {label}"
        )
    ax.plot(
        [alpha_k[k] for k in alpha_k],
        [expected_speedup(alpha_k[k], gamma_trunc, c_k[k], v=1.0) for k in alpha_k],
        "^",
        color=COLORS["prefix"],
        alpha=0.5,
        label=f"expected for drafts of {', '.join(str(k) for k in alpha_k)} blocks (c from bytes, v = 1)",
    )
    for ((draft, prompt), r), marker in zip(runs.items(), ["*", "P", "X"]):
        color = COLORS["causal"] if draft == "prompt lookup" else COLORS["prefix"]
        ax.plot(
            r["alpha"],
            r["speedup"],
            marker,
            color=color,
            markersize=13,
            markeredgecolor="black",
            label=f"measured: {draft}, {prompt} prompt",
        )
    ax.axhline(1, color="#999999", linestyle=":", linewidth=1)
    ax.set_xlabel(r"acceptance rate $\alpha$")
    ax.set_ylabel("speedup over plain decoding")
    ax.set_title("When does speculative decoding pay? (large markers: measured on SmolLM2)")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_sampler_distributions(exact: dict, dists: dict):
    """Bars over every two-token outcome: the target's exact distribution (``exact``: outcome -> probability)
    and the enumerated distributions of the speculative sampler under the min(1, p/q) rule and the greedy
    matching rule (``dists["leviathan"]``, ``dists["argmax"]``). Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from anatomy.book import COLORS

    outcomes = sorted(exact)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    w = 0.27
    xs = np.arange(len(outcomes))
    ax.bar(xs - w, [exact[o] for o in outcomes], w, color="#444444", label="target, sampled directly (exact)")
    ax.bar(
        xs,
        [dists["leviathan"].get(o, 0) for o in outcomes],
        w,
        color=COLORS["causal"],
        label="speculative, min(1, p/q) rule (exact enumeration)",
    )
    ax.bar(
        xs + w,
        [dists["argmax"].get(o, 0) for o in outcomes],
        w,
        color=COLORS["bidirectional"],
        label="speculative, greedy matching rule (exact enumeration)",
    )
    ax.set_xticks(xs, [f"{a}{b}" for a, b in outcomes])
    ax.set_xlabel("the two generated tokens")
    ax.set_ylabel("probability")
    ax.set_title("Output distribution of three samplers over a 4-token vocabulary")
    ax.legend(fontsize=8.5)
    return fig
