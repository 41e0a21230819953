"""anatomy.book.tables: the one HTML table builder."""

import pytest

from anatomy.book.tables import HTMLTable, html_table, raw


def test_cells_are_escaped_unless_raw_and_rows_counted():
    table = html_table(["a", "b<"], [(1, "x&y"), (raw("<i>2</i>"), 3)])
    assert isinstance(table, HTMLTable) and table._repr_html_() == str(table)
    assert table.count("<tr") == 3 and "b&lt;" in table and "x&amp;y" in table and "<i>2</i>" in table


def test_layout_options():
    table = html_table(
        ["n", "v"],
        [("a", 1)],
        widths=[30, 70],
        numeric=True,
        caption="c&d",
        styles=[[None, "background:#fff"]],
    )
    assert "<col style='width:30%'>" in table and "table-layout:fixed" in table
    assert "<caption>c&amp;d</caption>" in table
    assert "text-align:right;background:#fff" in table  # second column right-aligned, plus its style


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="row"):
        html_table(["a"], [(1, 2)])
    with pytest.raises(ValueError, match="widths"):
        html_table(["a", "b"], [(1, 2)], widths=[100])
    with pytest.raises(ValueError, match="styles"):
        html_table(["a", "b"], [(1, 2)], styles=[[None]])
    with pytest.raises(TypeError, match="header"):
        html_table([], [])
