"""The book's one HTML table builder.

Tables printed by code are HTML: the built book, Jupyter and Colab all render an HTML output, while a
Markdown table printed by code is shown as text in the built book (its outputs are CommonMark, which has no
tables). Cells are ``str()``-ed and escaped unless wrapped in :func:`raw`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["HTMLTable", "html_table", "raw"]


class raw(str):  # noqa: N801 (used like a function: raw("<i>x</i>"))
    """A cell that is already HTML: inserted as it is, not escaped."""


class HTMLTable(str):
    """The HTML text of a table; shown as a table when it ends a notebook cell (``_repr_html_``), and
    usable as a string (``IPython.display.HTML(table)``)."""

    def _repr_html_(self) -> str:
        return str(self)


def _cell(value) -> str:
    return str(value) if isinstance(value, raw) else html.escape(str(value))


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    widths: Sequence[float] | None = None,
    numeric: bool = False,
    caption: str | None = None,
    styles: Sequence[Sequence[str | None]] | None = None,
) -> HTMLTable:
    """An HTML table.

    Args:
        header: column names (str).
        rows: one sequence of cells per row, as many as the header; cells are escaped unless :func:`raw`.
        widths: column widths in percent: a full-width table whose long cells wrap (fixed layout).
        numeric: right-align every column but the first (a results table whose first column names the row).
        caption: a caption above the table.
        styles: per row and cell, extra CSS for that cell or None (e.g. a background colour for a status).

    Returns:
        :class:`HTMLTable`, a str.
    """
    if isinstance(header, str):
        raise TypeError("header must be a sequence of column names, got one str")
    if not hasattr(rows, "__iter__") or isinstance(rows, str):
        raise TypeError(f"rows must be a sequence of rows (sequences of cells), got {type(rows).__name__}")
    rows = list(rows)
    if not all(hasattr(r, "__iter__") and not isinstance(r, str) for r in rows):
        raise TypeError("rows must be a sequence of rows, each a sequence of cells")
    if not header or not all(isinstance(h, str) for h in header):
        raise TypeError("header must be a non-empty sequence of column names (str)")
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"rows: each must have as many cells as the header ({len(header)}), got {r}")
    if widths is not None and len(widths) != len(header):
        raise ValueError(f"widths must give one width per column ({len(header)}), got {len(widths)}")
    if widths is not None and not all(isinstance(w, (int, float)) and w > 0 for w in widths):
        raise ValueError(f"widths must be positive numbers, got {widths!r}")
    if not isinstance(numeric, bool):
        raise TypeError(f"numeric must be a bool, got {type(numeric).__name__}")
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"caption must be a str or None, got {type(caption).__name__}")
    if styles is not None and [len(s) for s in styles] != [len(r) for r in rows]:
        raise ValueError("styles must have the shape of rows (one entry per cell)")

    def style(i: int, extra: str | None = None) -> str:
        css = ["padding:2px 8px", "text-align:right" if numeric and i > 0 else "text-align:left"]
        if extra:
            css.append(extra)
        return f" style='{';'.join(css)}'"

    table_css = "border-collapse:collapse;font-size:0.9em;margin:0.5em 0"
    if widths is not None:
        table_css += ";width:100%;table-layout:fixed;overflow-wrap:anywhere"
    # The wrapper scrolls a wide table sideways by itself on a narrow screen (a phone), instead of the page.
    parts = [f"<div style='overflow-x:auto;max-width:100%'><table class='anatomy-table' style='{table_css}'>"]
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    if widths is not None:
        parts.append("<colgroup>" + "".join(f"<col style='width:{w}%'>" for w in widths) + "</colgroup>")
    parts.append(
        "<thead><tr>"
        + "".join(f"<th{style(i)}>{_cell(h)}</th>" for i, h in enumerate(header))
        + "</tr></thead><tbody>"
    )
    for k, r in enumerate(rows):
        extra = styles[k] if styles is not None else [None] * len(r)
        parts.append(
            "<tr style='border-top:1px solid #ddd;vertical-align:top'>"
            + "".join(f"<td{style(i, extra[i])}>{_cell(c)}</td>" for i, c in enumerate(r))
            + "</tr>"
        )
    parts.append("</tbody></table></div>")
    return HTMLTable("".join(parts))
