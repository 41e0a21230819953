"""The book's table of contents, ``_toc.yml``, read for the scripts and the tests (standard library only).

``pages(root)`` lists every page: the root page first, then every ``file:`` entry in the file's order
(parts, chapters and nested sections alike), without its suffix. ``chapters(root)`` keeps the chapter
notebooks' pages (``chapters/NN_slug``), in the book's order. Scripts import it with ``_ext/`` on
``sys.path``, as they import ``book_address``; tests/conftest.py puts ``_ext/`` there for the tests.

A line-based reading rather than a YAML parser, so that ``scripts/check_site.py`` needs nothing beyond the
standard library: the jb-book format writes one entry per line (``root: intro``, ``- file: chapters/01_x``),
quoted or not, with or without a comment after it. A page named in any other form (a flow mapping
``- {file: x}``, a ``glob:``, a path with a space, no space after the colon) raises ValueError naming the
line, rather than being left out of every check that reads this list. The package numbers its chapters with
its own reader, ``anatomy.claims.toc_pages`` (an installed wheel has no ``_ext/``); tests/test_toc.py checks
the two agree.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One entry of a jb-book table of contents: "root: X" or "[- ]file: X", X quoted or not, then a comment
# (a "#" after a space, as in YAML).
ENTRY = re.compile(r"""^[ \t]*(?:-[ \t]+)?(root|file):[ \t]+(["']?)([^"'#\s]+)\2(?:[ \t]+#.*)?[ \t]*$""")
# A key that names a page, in whatever form (block or flow mapping, quoted or not), once the line's comment is
# cut off: what ENTRY does not read must not be left out unnoticed
PAGE_KEY = re.compile(r"""(?:^[ \t]*(?:-[ \t]*)?|[{,][ \t]*)["']?(?:root|file|glob)["']?[ \t]*:""")


def pages(root: Path | str = ROOT) -> list[str]:
    """Every page of ``root/_toc.yml``: its root page first, then each ``file:`` entry in order, without the
    ``.ipynb`` / ``.md`` suffix (``["intro", "chapters/01_three_families", ..., "references"]``). ValueError
    for a page named in a form this reader does not read, and for no or several ``root:`` entries."""
    toc = Path(root) / "_toc.yml"
    entries = []
    for number, line in enumerate(toc.read_text(encoding="utf-8").splitlines(), 1):
        match = ENTRY.match(line)
        if match:
            entries.append(match.group(1, 3))
        elif PAGE_KEY.search(re.sub(r"(?:^|[ \t])#.*", "", line)):
            raise ValueError(
                f"{toc}:{number}: a page named in a form _ext/book_toc.py does not read: {line.strip()!r} "
                "(write one entry per line, `- file: chapters/NN_slug` or `root: intro`, no glob)"
            )
    roots = [p for key, p in entries if key == "root"]
    if len(roots) != 1:
        raise ValueError(f"{toc}: {len(roots)} root: entries (a jb-book table of contents has one)")
    ordered = roots + [p for key, p in entries if key == "file"]
    return [re.sub(r"\.(ipynb|md)$", "", p) for p in ordered]


def chapters(root: Path | str = ROOT) -> list[str]:
    """The chapters' pages of ``root/_toc.yml`` (those under ``chapters/``), in the book's order."""
    return [p for p in pages(root) if p.startswith("chapters/")]
