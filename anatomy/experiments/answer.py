"""The answer page and the scoreboard: the book's conclusions, each tied to the claims that support or
contradict it, and the table and figure of every registered claim with its verdict and numbers."""

from __future__ import annotations

import html

# ---------------------------------------------------------------------------------------------------------
# The answer in five minutes: points generated from the claims registry
# ---------------------------------------------------------------------------------------------------------

# Each point lists candidate claims, best first: (key, fields its numbers must have, lead, sentence template).
# A key renamed in a later edition is found again by its chapter's slug and fields (see resolve_point).
ANSWER_POINTS = (
    (
        (
            "signal_density.signal_share",
            ("causal_share", "masked_share"),
            "Every token is a lesson.",
            "Next-token prediction puts a loss on {causal_share:.0%} of the positions of a text, BERT's "
            "masked LM on {masked_share:.0%}, so the same text gives a decoder several times more "
            "supervised predictions (at equal compute the gain is smaller than that ratio, but real).",
        ),
    ),
    (
        (
            "kv_cache.multiturn_reuse",
            ("flop_ratio_turn5", "prefix_key_change"),
            "The cache survives the conversation.",
            "A decoder's keys and values depend only on earlier tokens, so a chat reuses its KV cache turn "
            "after turn: {flop_ratio_turn5:.1f}x fewer FLOPs at turn 5 of a SmolLM2 dialogue, while a "
            "prefix LM's cached keys go stale when the prompt grows (they change by "
            "{prefix_key_change:.0%}).",
        ),
    ),
    (
        (
            "entropy_chain_rule.loss_is_entropy_plus_kl",
            ("entropy_rate", "kl_after_200000_tokens"),
            "The loss is an honest likelihood.",
            "Next-token cross-entropy is the text's entropy plus the model's KL divergence, a proper "
            "likelihood of whole texts whose excess can be tracked: a small decoder on a source of entropy "
            "{entropy_rate:.2f} nats per token got within {kl_after_200000_tokens:.4f} nats of it.",
        ),
    ),
    (
        (
            "order_without_positions.causal_implicit_position",
            ("probe_r2_init_causal", "probe_r2_init_bidirectional"),
            "Order comes for free.",
            "Causal attention tells positions apart even without position embeddings: a linear probe reads "
            "position from a causal model's states with R\u00b2 = {probe_r2_init_causal:.2f}, while on a "
            "bidirectional model's states it does no better than the mean (R\u00b2 = "
            "{probe_r2_init_bidirectional:.1e}).",
        ),
    ),
    (
        (
            "in_context_learning.smollm2_in_context",
            ("accuracy_k0", "accuracy_k8"),
            "A prompt is just more context.",
            "With no training at all, SmolLM2 answers country-to-capital questions correctly "
            "{accuracy_k0:.0%} of the time with no examples in the prompt and {accuracy_k8:.0%} with eight.",
        ),
        (
            "three_families.one_block_four_masks",
            ("kernel_max_err",),
            "One block, one choice of mask.",
            "Encoder, decoder, prefix LM and encoder-decoder are one block with different masks (one kernel "
            "computes all four within {kernel_max_err:.0e} of float64), so choosing the causal mask gives "
            "up only a bidirectional reading of the prompt, and buys the four points above.",
        ),
    ),
)

# Popular reasons that did not survive the book's tests (claims with the verdict "contradicted").
FAILED_REASONS = (
    (
        (
            "attention_rank.causal_full_rank",
            ("causal_log10_det", "bidirectional_numerical_rank"),
            "Causal attention is full rank, hence more expressive.",
            "Full rank only in exact arithmetic: a causal attention map's determinant was "
            "10^{causal_log10_det:.0f}, and a bidirectional map was numerically full rank too "
            "({bidirectional_numerical_rank} of 128).",
        ),
    ),
    (
        (
            "entropy_chain_rule.span_corruption_shatters",
            ("span_sum_error",),
            "Encoder-decoders shatter the chain rule.",
            "Span corruption's target is a proper conditional likelihood: it sums to 1 over every span "
            "content within {span_sum_error:.0e}.",
        ),
    ),
    (
        (
            "causal_kernel.throughput_decides",
            ("saving_llama3_70b_8k",),
            "The lower triangle makes training much cheaper.",
            "Skipping the upper triangle saves {saving_llama3_70b_8k:.0%} of Llama-3-70B's forward FLOPs at "
            "8k tokens: attention is a small part of a large model's compute.",
        ),
    ),
)

SUPPORTING = ("supported", "supported with caveats")


def resolve_point(candidates, verdicts=SUPPORTING) -> dict:
    """The first candidate claim that exists with an accepted verdict and numbers with the wanted fields.

    The numbers are what the claim's chapter check recorded in this build (:func:`anatomy.claims.recorded`,
    only if the check passed and it holds every wanted field), so the page quotes the chapter's own
    numbers; without such a record (a page run on its own, as in Colab) they come from the claim's quick()
    recomputation, a smaller independent run whose numbers can differ from the chapter's. A
    candidate key that is missing (renamed) is replaced by a claim of the same chapter (the key's slug)
    whose numbers have the same fields. Returns {key, chapter, verdict, numbers, sentence} (``chapter``: the
    chapter's number from ``_toc.yml``, see :func:`anatomy.claims.chapters`); raises LookupError if none fits.
    """
    from anatomy import claims

    registry = {c.key: c for c in claims.all_claims()}
    recorded = {k: v for k, v in claims.recorded().items() if v.get("passed")}
    tried = []
    for key, fields, lead, template in candidates:
        slug = key.split(".", 1)[0]
        options = [registry[key]] if key in registry else [c for c in registry.values() if c.slug == slug]
        for c in options:
            numbers, source = None, None
            if c.verdict in verdicts:
                mine = recorded.get(c.key)
                if mine is not None and all(f in mine for f in fields):
                    numbers, source = mine, "recorded"
                elif c.quick is not None:
                    numbers, source = c.quick(), "quick"
                else:
                    numbers, source = mine, "recorded"
            if numbers is None:
                tried.append(f"{c.key} ({c.verdict}, numbers={'yes' if numbers else 'no'})")
                continue
            if all(f in numbers for f in fields):
                return {
                    "lead": lead,
                    "key": c.key,
                    "slug": c.slug,
                    "chapter": c.chapter,
                    "verdict": c.verdict,
                    "numbers": numbers,
                    "source": source,
                    "sentence": template.format(**numbers),
                }
            tried.append(f"{c.key} (its numbers lack {[f for f in fields if f not in numbers]})")
    raise LookupError(f"no candidate claim qualifies; tried {tried or [k for k, *_ in candidates]}")


def answer_points() -> list[dict]:
    """The five points resolved against the registry: {lead, key, chapter, verdict, numbers, sentence}."""
    return [resolve_point(cands) for cands in ANSWER_POINTS]


def failed_reasons() -> list[dict]:
    """The popular reasons the book contradicted, resolved the same way (verdict "contradicted")."""
    return [resolve_point(cands, verdicts=("contradicted",)) for cands in FAILED_REASONS]


def chapter_page(slug: str) -> str | None:
    """The page of the chapter ``slug`` ("signal_density" -> "chapters/NN_signal_density"), from
    ``_toc.yml`` (:func:`anatomy.claims.chapters`), or None if the book has no such chapter."""
    from anatomy import claims

    found = claims.chapters().get(slug)
    return found.page if found else None


def _chapter_label(c) -> str:
    """How the scoreboard names the chapter of claim ``c``: its number, or its slug where the package knows
    no table of contents (:func:`anatomy.claims.chapters` is empty)."""
    return str(c.chapter) if c.chapter is not None else c.slug


def answer_html(points) -> str:
    """The points as an HTML list, each with a link to the chapter that measured it."""
    items = []
    for p in points:
        page = chapter_page(p["slug"])
        name = f"chapter {p['chapter']}" if p["chapter"] is not None else f"the chapter {p['slug']}"
        where = f"<a href='{page}.html'>{name}</a>" if page else name
        items.append(
            f"<li><b>{html.escape(p['lead'])}</b> {html.escape(p['sentence'])} "
            f"<span style='color:#666'>({where}; claim <code>{p['key']}</code>: {p['verdict']}"
            f"{'; numbers from a small quick recomputation' if p.get('source') == 'quick' else ''})"
            "</span></li>"
        )
    return "<ol>" + "".join(items) + "</ol>"


# ---------------------------------------------------------------------------------------------------------
# The scoreboard (the last chapter): every registered claim, its verdict and the numbers behind it
# ---------------------------------------------------------------------------------------------------------

# Background of a verdict's cell in the scoreboard table, and the colour of its bars in the figure.
VERDICT_COLOURS = {
    "supported": "#d8f0d8",
    "supported with caveats": "#fff3c4",
    "contradicted": "#f8d4d4",
    "not testable here": "#e4e4e4",
}
VERDICT_BAR_COLOURS = {
    "supported": "#009E73",
    "supported with caveats": "#E69F00",
    "contradicted": "#D55E00",
    "not testable here": "#999999",
}


def format_number(value) -> str:
    """A recorded number as the scoreboard shows it: floats to 3 significant digits, ints with commas."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def listed(numbers: dict) -> str:
    """``name = value, ...`` of a claim's numbers, each value by :func:`format_number`."""
    return ", ".join(f"{k} = {format_number(v)}" for k, v in numbers.items())


def scoreboard_rows(registry, recorded: dict) -> tuple[list[tuple], list[str]]:
    """One row per claim of ``registry`` (:func:`anatomy.claims.all_claims`): (claim, the numbers its
    chapter recorded in ``recorded`` (:func:`anatomy.claims.recorded`) with the check's status, and the
    numbers of its independent small replication, ``quick()``, run now). A quick() that raises is shown in
    its row and its key listed in the second value returned, so that one broken replication hides nothing
    else."""
    rows, failures = [], []
    for c in registry:
        if c.key in recorded:
            record = dict(recorded[c.key])
            status = "check passed" if record.pop("passed") else "CHECK FAILED"
            chapter_numbers = f"{status}: {listed(record)}"
        elif c.verdict == "not testable here":
            chapter_numbers = "no check: see the chapter's discussion"
        else:
            chapter_numbers = "not recorded in this run (run the chapter with ANATOMY_RESULTS set)"
        if c.quick is not None:
            try:
                replication = listed(c.quick())
            except Exception as exc:  # a broken quick() must show, not hide the rest of the table
                failures.append(c.key)
                replication = f"quick() failed: {type(exc).__name__}: {exc}"
        elif c.verdict == "not testable here":
            replication = "none"
        else:
            replication = "none (the measurement needs the chapter's training run)"
        rows.append((c, chapter_numbers, replication))
    return rows, failures


def scoreboard_table(rows: list[tuple]) -> str:
    """The scoreboard as an HTML table (:func:`anatomy.book.tables.html_table`) of :func:`scoreboard_rows`:
    chapter, claim with its seeds and what is checked, the verdict on its colour, the recorded numbers and
    the replication's."""
    from anatomy.book.tables import html_table, raw

    def claim_cell(c):
        seeds = f"seed{'s' if len(c.seeds) > 1 else ''} {', '.join(c.seeds)}"
        return raw(
            f"{html.escape(c.claim)} <i>({seeds})</i><br><small>Checked: {html.escape(c.measure)}</small>"
        )

    cells = [
        [_chapter_label(c), claim_cell(c), c.verdict, chapter_numbers, replication]
        for c, chapter_numbers, replication in rows
    ]
    styles = [
        [None, None, f"background:{VERDICT_COLOURS[c.verdict]};color:#1a1a1a", None, None] for c, _, _ in rows
    ]
    header = [
        "ch.",
        "claim (seeds) and what is checked",
        "verdict",
        "numbers recorded by the chapter",
        "independent small replication",
    ]
    return html_table(header, cells, widths=[4, 32, 10, 30, 24], styles=styles)


def plot_verdicts(registry):
    """Stacked bars: the claims of each chapter of ``registry``, coloured by verdict. Returns the figure."""
    import matplotlib.pyplot as plt

    chapters = list(dict.fromkeys(c.slug for c in registry))  # the registry's order: the book's
    labels = {c.slug: _chapter_label(c) for c in registry}
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    bottom = [0] * len(chapters)
    for verdict, color in VERDICT_BAR_COLOURS.items():
        heights = [sum(c.slug == ch and c.verdict == verdict for c in registry) for ch in chapters]
        ax.bar([labels[ch] for ch in chapters], heights, bottom=bottom, color=color, label=verdict)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel("chapter")
    ax.set_ylabel("claims tested")
    ax.set_title("Verdicts on the sources' claims, by chapter")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return fig
