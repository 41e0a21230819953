"""The chapters' experiments: one module per argument the book tests, built on the core of ``anatomy``.

The core (``anatomy.*``) never imports these modules; a chapter imports the one it runs. A module is named
after the argument, not the chapter number, and its docstring's first sentence says what it holds.

Which module serves which chapter is not kept by hand: :func:`index` reads it from the chapters
themselves (the ``from anatomy.experiments import ...`` lines of the notebooks that ``_toc.yml`` lists,
numbered by their place there) and from the modules' docstrings, so a new chapter adds its module and
nothing here. Print the table with ``python -m anatomy.experiments``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

__all__ = ["index"]

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
_IMPORT = re.compile(r"^[ \t]*from[ \t]+anatomy\.experiments[ \t]+import[ \t]+(\([^)]*\)|[^\n]+)", re.M)
_IMPORT_DOTTED = re.compile(r"^\s*(?:from|import)\s+anatomy\.experiments\.(\w+)", re.M)


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring ('' without one)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(doc.split("\n\n", 1)[0].split())
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


def _imported(code: str) -> set[str]:
    """The experiment modules that a piece of code imports."""
    names = {m for m in _IMPORT_DOTTED.findall(code)}
    for group in _IMPORT.findall(code):
        names |= {part.split()[0] for part in group.strip("()").split(",") if part.split()}
    return names


def _pages() -> list[tuple[str, Path]]:
    """(label, notebook) of every notebook page of the book: "1".."N" for the chapters, else the name."""
    from anatomy import claims

    pages = [(str(c.number), _ROOT / f"{c.page}.ipynb") for c in claims.chapters().values()]
    numbered = {path for _, path in pages}
    for path in sorted(_ROOT.glob("*.ipynb")):  # back matter, such as the answer page
        if path not in numbered:
            pages.append((path.stem, path))
    return [(label, path) for label, path in pages if path.is_file()]


def index() -> list[dict]:
    """One row per experiment module: ``module``, ``pages`` (the chapter numbers, or page names, of the
    notebooks that import it), ``used_by`` (the experiment modules that import it) and ``summary`` (the
    first sentence of its docstring). In an installed package, which ships no notebooks, ``pages`` is
    empty."""
    modules = sorted(p.stem for p in _HERE.glob("*.py") if not p.stem.startswith("_"))
    pages: dict[str, list[str]] = {m: [] for m in modules}
    for label, path in _pages():
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        code = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
        for name in sorted(_imported(code) & set(modules)):
            pages[name].append(label)
    used_by: dict[str, list[str]] = {m: [] for m in modules}
    for m in modules:
        for name in sorted(_imported((_HERE / f"{m}.py").read_text(encoding="utf-8")) & set(modules)):
            used_by[name].append(m)
    return [
        {"module": m, "pages": pages[m], "used_by": used_by[m], "summary": _summary(_HERE / f"{m}.py")}
        for m in modules
    ]


def _table() -> str:
    rows = index()
    width = max(len(r["module"]) for r in rows)
    where = [", ".join(r["pages"] + [f"via {u}" for u in r["used_by"]]) for r in rows]
    width2 = max(len("chapters"), *(len(w) for w in where))
    lines = [f"{'module':<{width}}  {'chapters':<{width2}}  summary"]
    lines += [f"{r['module']:<{width}}  {w:<{width2}}  {r['summary']}" for r, w in zip(rows, where)]
    return "\n".join(lines)
