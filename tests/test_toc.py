"""The book's one reader of _toc.yml, anatomy.claims.toc_all_pages / toc_pages, which the scripts and tests
reach through _ext/book_toc.py and an installed wheel's build step through setup.py: what a YAML parser reads,
and, on the book's own table of contents, the chapters of its numbered parts (what Jupyter Book numbers)."""

import json
import re
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py)
import pytest
import yaml

from anatomy import claims

ROOT = Path(__file__).resolve().parents[1]


def _yaml_pages(text: str) -> list[str]:
    """Every page of a jb-book table of contents by a YAML parser: root, then every file entry in order."""
    toc = yaml.safe_load(text)

    def files(node) -> list[str]:
        if isinstance(node, list):
            return [f for item in node for f in files(item)]
        if not isinstance(node, dict):
            return []
        own = [str(node["file"])] if "file" in node else []
        return own + [f for key, value in node.items() if key != "root" for f in files(value)]

    return [p.removesuffix(".ipynb").removesuffix(".md") for p in [toc["root"], *files(toc)]]


def test_the_book_s_pages_are_what_yaml_reads():
    text = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert book_toc.pages(ROOT) == _yaml_pages(text)
    assert book_toc.pages(ROOT)[0] == "intro" and "references" in book_toc.pages(ROOT)


def test_the_chapters_are_the_ones_the_book_numbers():
    """The chapters (pages under chapters/), in order, are the chapters of the numbered parts as a YAML parser
    reads them, which Jupyter Book numbers 1, 2, ...: so "chapter N" in the text, anatomy.claims' numbers and
    the scripts agree. A chapter put in an unnumbered part or nested as a section fails here."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    numbered = [
        str(c["file"]).removesuffix(".ipynb").removesuffix(".md")
        for part in toc.get("parts", [])
        if part.get("numbered")
        for c in part.get("chapters", [])
    ]
    assert book_toc.chapters(ROOT) == numbered
    assert [c.page for c in claims.chapters().values()] == numbered and len(numbered) >= 10


def test_book_toc_is_the_package_s_reader():
    """_ext/book_toc.py has no reader of its own: it answers with anatomy.claims' functions (so a change to
    the package's reader reaches the scripts and tests), and the package reads what it reads."""
    assert Path(book_toc._reader().__file__).resolve() == ROOT / "anatomy" / "claims" / "__init__.py"
    text = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert book_toc.pages(ROOT) == claims.toc_all_pages(text)
    assert book_toc.chapters(ROOT) == claims.toc_pages(text)


def test_nested_parts_and_suffixes(tmp_path):
    text = (
        "format: jb-book\nroot: intro\nparts:\n  - caption: A\n    chapters:\n      - file: chapters/01_a\n"
        "        sections:\n          - file: chapters/01_b.ipynb\n  - caption: B\n    chapters:\n"
        "      - file: references\n"
    )
    (tmp_path / "_toc.yml").write_text(text, encoding="utf-8")
    expected = ["intro", "chapters/01_a", "chapters/01_b", "references"]
    assert book_toc.pages(tmp_path) == expected == _yaml_pages(text) == claims.toc_all_pages(text)


def test_nested_quoted_and_commented_entries(tmp_path):
    text = (
        "# a comment: file: not/a/page\n"
        "format: jb-book\n"
        "parts:\n"
        "  - caption: A  # file: nor/this\n"
        "    numbered: true\n"
        "    chapters:\n"
        "      - file: chapters/01_a.ipynb   # the first\n"
        "        sections:\n"
        "          - file: 'chapters/01_b'\n"
        '      - file: "chapters/02_c.md"\n'
        "  - caption: Back matter\n"
        "    chapters:\n"
        "      - file: references\n"
        "root: intro\n"
    )
    (tmp_path / "_toc.yml").write_text(text, encoding="utf-8")
    expected = ["intro", "chapters/01_a", "chapters/01_b", "chapters/02_c", "references"]
    assert book_toc.pages(tmp_path) == expected == _yaml_pages(text)
    assert book_toc.chapters(tmp_path) == ["chapters/01_a", "chapters/01_b", "chapters/02_c"]


@pytest.mark.parametrize(
    "entry",
    [
        "- {file: chapters/02_d}",  # flow mapping
        "- {title: D, file: chapters/02_d}",
        "- glob: chapters/*",  # a pattern, not a page
        "- file: chapters/02 d",  # a space in the path
        "- file:chapters/02_d",  # no space after the colon: YAML reads one string, not a mapping
        "- file: chapters/02_d#x",  # YAML reads the '#' as part of the name
        '- "file": chapters/02_d',  # a quoted key
        "- file: >-",  # a block scalar: the page is on the next lines
        "- file: *page",  # an alias
        "- file: &page chapters/02_d",  # an anchor
        "- file: !!str chapters/02_d",  # a tag
    ],
)
def test_a_page_in_a_form_it_does_not_read_raises(tmp_path, entry):
    """A page the line reader would not see is an error naming the line, not a page left out of every check
    that reads this list (check_site, the determinism and browser tests)."""
    (tmp_path / "_toc.yml").write_text(f"root: intro\nchapters:\n  - file: chapters/01_a\n  {entry}\n")
    with pytest.raises(ValueError, match=rf"_toc.yml:4: .*{re.escape(entry)}"):
        book_toc.pages(tmp_path)


def test_a_title_or_comment_that_mentions_a_key_is_no_entry(tmp_path):
    text = 'root: intro\nchapters:\n  - file: chapters/01_a\n    title: "The file: format"  # root: no\n'
    (tmp_path / "_toc.yml").write_text(text)
    assert book_toc.pages(tmp_path) == ["intro", "chapters/01_a"] == _yaml_pages(text)


@pytest.mark.parametrize("text", ["chapters:\n  - file: chapters/01_a\n", "root: intro\nroot: index\n"])
def test_no_or_two_root_entries_raise(tmp_path, text):
    (tmp_path / "_toc.yml").write_text(text)
    with pytest.raises(ValueError, match="root: entries"):
        book_toc.pages(tmp_path)


def test_pages_found_by_slug_and_by_role(tmp_path):
    """Tests name the chapters they run by slug (book_toc.chapter) and the scoreboard by what its code does
    (book_toc.scoreboard), so renumbering or renaming it changes nothing they test; none or two: an error."""

    def notebook(path, code):
        cells = [{"cell_type": "code", "metadata": {}, "source": code, "outputs": []}]
        (tmp_path / f"{path}.ipynb").write_text(json.dumps({"cells": cells}))

    (tmp_path / "chapters").mkdir()
    toc = "root: intro\nchapters:\n  - file: chapters/01_a\n  - file: chapters/02_board\n  - file: the_end\n"
    (tmp_path / "_toc.yml").write_text(toc)
    notebook("chapters/01_a", "rows = 1")
    notebook("chapters/02_board", "rows, failures = answer.scoreboard_rows(registry, recorded)")
    notebook("the_end", "answer.scoreboard_table(rows)")  # not a chapter: no scoreboard
    assert book_toc.chapter("board", tmp_path) == "chapters/02_board" == book_toc.scoreboard(tmp_path)
    assert book_toc.scoreboard(ROOT) in book_toc.chapters(ROOT)  # the book's own has one
    with pytest.raises(LookupError, match="slug 'b'"):
        book_toc.chapter("b", tmp_path)
    notebook("chapters/01_a", "display(HTML(answer.scoreboard_table(rows)))")
    with pytest.raises(LookupError, match="2 chapters .* build the scoreboard"):
        book_toc.scoreboard(tmp_path)
    notebook("chapters/01_a", "rows = 1")
    notebook("chapters/02_board", "rows = answer.board(registry)")  # the board's call renamed
    with pytest.raises(LookupError, match="0 chapters .* build the scoreboard"):
        book_toc.scoreboard(tmp_path)
