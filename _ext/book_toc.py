"""The book's table of contents, ``_toc.yml``, for the scripts and the tests (standard library only).

``pages(root)`` lists every page: the root page first, then every ``file:`` entry in the file's order
(parts, chapters and nested sections alike), without its suffix. ``chapters(root)`` keeps the chapter
notebooks' pages (``chapters/NN_slug``), in the book's order: the pages the package numbers. Pages that a
test or script needs are found by what they are, never by a number that moves when a chapter is inserted:
``chapter(slug)`` by the file name without its number, ``scoreboard()`` by what its code does. Scripts
import it with ``_ext/`` on ``sys.path``, as they import ``book_address``; tests/conftest.py puts ``_ext/``
there for the tests.

This is a door, not a second reader: the one reader is the package's, ``anatomy.claims.toc_all_pages`` and
``anatomy.claims.toc_pages`` (the package numbers its chapters with it, and an installed wheel, as in Colab,
has no ``_ext/`` to import from). It is loaded here from its file, ``anatomy/claims/__init__.py`` of this
repository, as ``setup.py`` loads it: that module's top level imports the standard library only, so a script
that reads the table of contents needs neither torch nor PyYAML. The reader raises ValueError, naming the
line, for a page named in a form it does not read (tests/test_toc.py).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _reader():
    """This repository's anatomy/claims/__init__.py, loaded by path (importing ``anatomy`` loads torch)."""
    path = ROOT / "anatomy" / "claims" / "__init__.py"
    spec = importlib.util.spec_from_file_location("_anatomy_claims_toc_reader", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pages(root: Path | str = ROOT) -> list[str]:
    """Every page of ``root/_toc.yml``: its root page first, then each ``file:`` entry in order, without the
    ``.ipynb`` / ``.md`` suffix (``["intro", "chapters/01_three_families", ..., "references"]``). ValueError
    for a page named in a form the reader does not read, and for no or several ``root:`` entries."""
    toc = Path(root) / "_toc.yml"
    return _reader().toc_all_pages(toc.read_text(encoding="utf-8"), str(toc))


def chapters(root: Path | str = ROOT) -> list[str]:
    """The chapters' pages of ``root/_toc.yml`` (those under ``chapters/``), in the book's order."""
    toc = Path(root) / "_toc.yml"
    return _reader().toc_pages(toc.read_text(encoding="utf-8"), str(toc))


def chapter(slug: str, root: Path | str = ROOT) -> str:
    """The page of the chapter whose file name, without its ``NN_`` number, is ``slug``
    (``chapter("kv_cache")`` -> ``"chapters/09_kv_cache"``); LookupError unless one chapter has it."""
    found = [page for page in chapters(root) if _reader().slug_of(page) == slug]
    if len(found) != 1:
        raise LookupError(f"{len(found)} chapters of {Path(root) / '_toc.yml'} have the slug {slug!r}")
    return found[0]


# What makes a chapter the scoreboard: its code builds the board from the claims registry
SCOREBOARD_CALL = re.compile(r"\banswer\.scoreboard_(?:rows|table)\(")


def scoreboard(root: Path | str = ROOT) -> str:
    """The page of the scoreboard, the chapter whose code calls ``answer.scoreboard_rows(`` or
    ``answer.scoreboard_table(`` (:data:`SCOREBOARD_CALL`), found by that role and not by its number or file
    name; LookupError unless exactly one chapter of ``_toc.yml`` does."""
    code = {page: notebook_code(Path(root) / f"{page}.ipynb") for page in chapters(root)}
    found = [page for page, text in code.items() if SCOREBOARD_CALL.search(text)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} chapters of {Path(root) / '_toc.yml'} build the scoreboard: {found}")
    return found[0]


def notebook_code(notebook: Path) -> str:
    """The code cells' text of a notebook ('' when the file is missing)."""
    if not notebook.is_file():
        return ""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n".join(
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in cells
        if c["cell_type"] == "code"
    )
