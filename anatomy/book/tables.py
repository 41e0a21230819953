"""HTML tables for the book's pages."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "html_table",
]


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table (for ``IPython.display.HTML``; the built book renders HTML outputs, while Markdown
    outputs there are CommonMark, which has no tables). Cells are str()-ed and escaped: format them first."""
    import html as _html

    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row must have as many cells as the header")
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{_html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{_html.escape(str(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return (f"<table style='border-collapse:collapse;font-size:0.9em;margin:0.5em 0'><thead><tr>{head}"
            f"</tr></thead><tbody>{body}</tbody></table>")


def table(header: list[str], rows: list[list], caption: str | None = None):
    """A small results table as HTML (an IPython ``HTML`` object, displayed when it ends a cell or is passed
    to ``display``): it renders the same in Jupyter, Colab and the built book, where Markdown tables printed
    by code do not. Cells are shown with ``str`` and escaped; every column but the first is right-aligned.
    """
    import html

    from IPython.display import HTML

    if not header or not all(isinstance(h, str) for h in header):
        raise TypeError("header must be a non-empty list of column names (str)")
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"every row must have {len(header)} cells (one per header), got {len(r)}: {r!r}")

    def line(cells, tag: str) -> str:  # the first column names the row; the others hold values
        right = ' style="text-align:right"'
        return "<tr>" + "".join(f"<{tag}{'' if i == 0 else right}>{html.escape(str(v))}</{tag}>"
                                for i, v in enumerate(cells)) + "</tr>"

    parts = ["<table class='anatomy-table'>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<thead>" + line(header, "th") + "</thead><tbody>")
    parts += [line(r, "td") for r in rows]
    parts.append("</tbody></table>")
    return HTML("".join(parts))
