"""_ext/book_toc.py, the scripts' and tests' one reader of _toc.yml: what a YAML parser reads, and the
chapters that the package numbers (anatomy.claims.toc_pages, the reader an installed wheel uses)."""

from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py)
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


def test_the_chapters_are_the_ones_the_package_numbers():
    """The same chapters, in the same order, as anatomy.claims numbers them (so "chapter N" agrees)."""
    text = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert book_toc.chapters(ROOT) == claims.toc_pages(text)
    assert len(book_toc.chapters(ROOT)) >= 10


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
