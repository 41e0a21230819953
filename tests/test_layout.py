"""The package's two tiers: the core (``anatomy/*.py``, ``anatomy/kernels``) never imports an experiment
(``anatomy.experiments``), the book's helpers (``anatomy.book``) or the claims registry; no module grows
past ~700 lines; no two public functions or classes of the package share a name; the docstrings and comments
of every module of the package (core, experiments, book helpers, claims) name a chapter by its topic or file
stem, never by its number."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anatomy"
CORE = sorted(PACKAGE.glob("*.py")) + sorted((PACKAGE / "kernels").glob("*.py"))
UPPER_TIERS = ("anatomy.experiments", "anatomy.book", "anatomy.claims")
MAX_LINES = 750  # "about 700": a module longer than this holds more than one idea


def from_module(node: ast.ImportFrom, package: str) -> str:
    """The absolute name of the module a ``from ... import`` statement in ``package`` imports from
    (``from .experiments import x`` in ``anatomy`` -> ``anatomy.experiments``; ``from .. import book`` in
    ``anatomy.kernels`` -> ``anatomy``)."""
    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
    return ".".join(base + ([node.module] if node.module else []))


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (lazy imports included);
    relative imports (``from .experiments import x``, ``from .. import book``) as absolute names."""
    package = ".".join(("anatomy",) + path.relative_to(PACKAGE).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, package)
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def test_the_import_scan_sees_relative_imports(monkeypatch):
    """The core check cannot be passed by writing an upper-tier import relatively."""
    fake = PACKAGE / "kernels" / "_scan_probe.py"  # only its path is used: the text comes from read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, encoding=None: (
            "from ..experiments import rank\nfrom .. import book\n"
            "from . import tiled\nimport anatomy.claims\n"
        ),
    )
    names = _imported_modules(fake)
    assert {"anatomy.experiments.rank", "anatomy.book", "anatomy.kernels.tiled", "anatomy.claims"} <= names


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_imports_no_experiment_and_no_book_helper(path):
    upper = sorted(m for m in _imported_modules(path) if m.startswith(UPPER_TIERS))
    assert not upper, f"{path.name} imports {upper}: the core must not depend on the upper tiers"


def test_every_chapter_experiment_lives_in_the_experiments_subpackage():
    experiments = {p.stem for p in (PACKAGE / "experiments").glob("*.py")} - {"__init__"}
    assert experiments and not experiments & {p.stem for p in PACKAGE.glob("*.py")}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_too_long_to_read(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {n} lines: split it by idea"


def test_no_two_public_names_mean_different_things():
    where = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        if "claims" in path.parts:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    # anatomy/__init__ defines from_hf/to_hf as lazy wrappers of anatomy.convert's (the same functions);
    # kernels/__init__ wraps the Triton kernel to load it on first use.
    allowed = {"from_hf", "to_hf", "triton_attention"}
    twice = {name: files for name, files in where.items() if len(files) > 1 and name not in allowed}
    assert not twice, twice


# "chapter 9", "Chapters 8-10", "ch. 4", "CHAPTER 9", "chapter" and "9" on two lines of a docstring: a
# chapter named by its number, which moves when a chapter is inserted
CHAPTER_NUMBER = re.compile(r"\b(?:chapters?|ch\.)\s*\d+", re.IGNORECASE)
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)  # every module, any depth


def _chapter_numbers(text: str) -> list[str]:
    """Every chapter number named in the docstrings and comments of a module's source (other strings,
    such as text a page shows, are not looked at)."""
    docs = [
        ast.get_docstring(node) or ""
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    comments = [
        t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT
    ]
    return [m for part in docs + comments for m in CHAPTER_NUMBER.findall(part)]


def test_the_chapter_number_scan_sees_docstrings_and_comments():
    text = (
        '"""Chapter 3, capacity."""\n'
        "def f():\n"
        '    """As ch. 4 shows, and CHAPTER\n    6 after it."""\n'
        "    return 'chapter 5'  # chapters 8-10 time it\n"
        "class C:\n"
        '    """The capacity chapter\'s helper (no number)."""\n'
    )
    assert _chapter_numbers(text) == ["Chapter 3", "ch. 4", "CHAPTER\n6", "chapters 8"]


def test_the_scan_covers_every_module_and_fails_on_a_number(tmp_path):
    """The parametrized test below sees the core, the kernels, the experiments, the book helpers and the
    claims, and fails on a module that names a chapter by number (a planted one here)."""
    covered = {p.relative_to(PACKAGE).parts[0] for p in MODULES}
    assert {"model.py", "objectives.py", "kernels", "experiments", "book", "claims"} <= covered
    assert PACKAGE / "kernels" / "tiled.py" in MODULES and PACKAGE / "__init__.py" in MODULES
    planted = tmp_path / "planted.py"
    planted.write_text('def f():\n    """Exact only without a cache (that is chapter 9\'s point)."""\n')
    with pytest.raises(AssertionError, match=r"names \['chapter 9'\]"):
        test_docstrings_name_no_chapter_number(planted)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_docstrings_name_no_chapter_number(path):
    """The package must not depend on the book's numbering: inserting a chapter renumbers the later ones,
    and a docstring or comment that kept the old number would name another chapter. Name it by topic or file
    stem ("the KV cache chapter")."""
    named = _chapter_numbers(path.read_text(encoding="utf-8"))
    assert not named, f"{path.name} names {named}: name the chapter by its topic or file stem"
