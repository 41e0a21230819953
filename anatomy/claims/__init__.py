"""The book's claims: one registry that the chapters' assertion cells and the scoreboard both use.

Each chapter declares its claims in ``anatomy/claims/<slug>.py`` with :func:`claim` (what the source says,
in our words; the verdict the chapter reaches; the measurable form that is checked). The slug is the
chapter's file name without its number (``chapters/07_in_context_learning.ipynb``: ``in_context_learning``)
and every key starts with it (``in_context_learning.induction_phase_change``). The chapter's assertion cell
calls :func:`check` with the measured numbers, so CI fails when the evidence stops supporting the text; the
scoreboard (the last chapter) lists every registered claim with its verdict and key numbers.

No chapter number is written down here: :func:`chapters` reads each chapter's number from its place in
``_toc.yml``, so a chapter inserted before others changes no key and no claims file.

This module is also the book's one reader of ``_toc.yml`` (:func:`toc_all_pages`, :func:`toc_pages`): the
scripts and tests reach it through ``_ext/book_toc.py``, which loads this file by its path (its module level
imports the standard library only, so that needs no torch), and ``setup.py`` does the same at build time.
It lives in the package because an installed wheel (Colab) has no ``_ext/``; the package cannot import the
repository, so the repository imports the package's reader.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VERDICTS = ("supported", "supported with caveats", "contradicted", "not testable here")

# Where the chapters' order comes from: the book's _toc.yml in a checkout (the package sits next to it),
# or, in an installed wheel (Colab), the chapter pages that setup.py wrote from that _toc.yml at build time.
TOC = Path(__file__).resolve().parents[2] / "_toc.yml"
INDEX = Path(__file__).with_name("_chapters.json")


@dataclass(frozen=True)
class Chapter:
    """A numbered chapter of the book, as ``_toc.yml`` lists it."""

    number: int  # its place among the chapters of _toc.yml's numbered parts, from 1
    slug: str  # its file name without the number: "in_context_learning"
    page: str  # its page: "chapters/07_in_context_learning"


# One entry of a jb-book table of contents: "root: X" or "[- ]file: X", X quoted or not, then a comment
# (a "#" after a space, as in YAML).
# (a value starting with a YAML indicator: a block scalar's > or |, an alias *, an anchor &, a tag !, is not
# a page: such lines fall to _TOC_PAGE_KEY and raise)
_TOC_ENTRY = re.compile(
    r"""^[ \t]*(?:-[ \t]+)?(root|file):[ \t]+(["']?)([^"'#\s>|*&!][^"'#\s]*)\2(?:[ \t]+#.*)?[ \t]*$"""
)
# A key that names a page, in whatever form (block or flow mapping, quoted or not), once the line's comment is
# cut off: what _TOC_ENTRY does not read must not be left out unnoticed
_TOC_PAGE_KEY = re.compile(r"""(?:^[ \t]*(?:-[ \t]*)?|[{,][ \t]*)["']?(?:root|file|glob)["']?[ \t]*:""")


def toc_all_pages(toc_text: str, where: str = "_toc.yml") -> list[str]:
    """Every page of a jb-book ``_toc.yml`` (its text): the root page first, then each ``file:`` entry in the
    file's order (parts, chapters and nested sections alike), without the ``.ipynb`` / ``.md`` suffix.

    A line-based reading rather than a YAML parser, so that it needs nothing beyond the standard library (the
    wheel's build step and ``scripts/check_site.py`` load it without PyYAML or torch): the jb-book format
    writes one entry per line (``root: intro``, ``- file: chapters/01_x``), quoted or not, with or without a
    comment after it. A page named in any other form (a flow mapping ``- {file: x}``, a ``glob:``, a path
    with a space, no space after the colon) raises ValueError naming ``where`` and the line, rather than
    being left out of every check and of the chapters' numbering; so do no or several ``root:`` entries.
    """
    entries = []
    for number, line in enumerate(toc_text.splitlines(), 1):
        match = _TOC_ENTRY.match(line)
        if match:
            entries.append(match.group(1, 3))
        elif _TOC_PAGE_KEY.search(re.sub(r"(?:^|[ \t])#.*", "", line)):
            raise ValueError(
                f"{where}:{number}: a page named in a form the reader of _toc.yml (anatomy.claims) does not "
                f"read: {line.strip()!r} (write one entry per line, `- file: chapters/NN_slug` or "
                "`root: intro`, no glob)"
            )
    roots = [p for key, p in entries if key == "root"]
    if len(roots) != 1:
        raise ValueError(f"{where}: {len(roots)} root: entries (a jb-book table of contents has one)")
    ordered = roots + [p for key, p in entries if key == "file"]
    return [re.sub(r"\.(ipynb|md)$", "", p) for p in ordered]


def toc_pages(toc_text: str, where: str = "_toc.yml") -> list[str]:
    """The chapters' pages of a jb-book ``_toc.yml`` (its text), in the book's order: the pages under
    ``chapters/``, which the book lists in its numbered parts (tests/test_toc.py checks that on the book's
    own table of contents), so a chapter's place here is its number."""
    return [p for p in toc_all_pages(toc_text, where) if p.startswith("chapters/")]


def slug_of(page: str) -> str:
    """A chapter page's slug: its file name without the ``NN_`` prefix ("chapters/07_icl" -> "icl")."""
    return re.sub(r"^\d+_", "", page.rsplit("/", 1)[-1])


@functools.cache
def chapters() -> dict[str, Chapter]:
    """slug -> :class:`Chapter`, in the book's order, numbered by place in ``_toc.yml``.

    Read from :data:`TOC` in a checkout and from :data:`INDEX` in an installed wheel; empty if neither is
    there (a copy of the package on its own), and then claims have no chapter number (``Claim.chapter`` is
    None) and the scoreboard names chapters by slug.
    """
    if TOC.is_file():
        pages = toc_pages(TOC.read_text(encoding="utf-8"), str(TOC))
    elif INDEX.is_file():
        pages = json.loads(INDEX.read_text(encoding="utf-8"))["pages"]
    else:
        pages = []
    return {slug_of(p): Chapter(n, slug_of(p), p) for n, p in enumerate(pages, start=1)}


@dataclass(frozen=True)
class Claim:
    """One claim from the sources, as a chapter tests it."""

    key: str  # "<chapter slug>.<name>": "three_families.prompt_is_causal"
    seeds: tuple[str, ...]  # source documents, by file number: ("000", "002")
    claim: str  # what the source says, in our words
    verdict: str  # one of VERDICTS: what the chapter's numbers say about the claim
    measure: str  # the measurable form that the chapter's assertion checks
    papers: tuple[str, ...] = ()  # BibTeX keys of the primary sources
    quick: Callable[[], dict] | None = field(default=None, compare=False)  # cheap recomputation (<= 5 s)

    @property
    def slug(self) -> str:
        """The slug of the chapter that tests the claim (the key up to its dot)."""
        return self.key.split(".", 1)[0]

    @property
    def chapter(self) -> int | None:
        """The chapter's number, from its place in ``_toc.yml`` (:func:`chapters`); None if unknown."""
        found = chapters().get(self.slug)
        return found.number if found else None


_REGISTRY: dict[str, Claim] = {}
RESULTS: dict[str, dict] = {}  # key -> numbers recorded by check() in this process
_KEY = re.compile(r"[a-z0-9_]+\.[a-z0-9_]+")


def claim(
    key: str,
    *,
    seeds: tuple[str, ...],
    claim: str,
    verdict: str,
    measure: str,
    papers: tuple[str, ...] = (),
    quick: Callable[[], dict] | None = None,
) -> Claim:
    """Register a claim (called at import time of ``anatomy/claims/<slug>.py``, with keys ``<slug>.name``)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"claim key must be '<chapter slug>.<name>' in lower case, got {key!r}")
    if key in _REGISTRY:
        raise ValueError(f"claim {key!r} is registered twice")
    c = Claim(key, tuple(seeds), claim, verdict, measure, tuple(papers), quick)
    _REGISTRY[key] = c
    return c


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):  # one module per chapter, named by its slug
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def get(key: str) -> Claim:
    """The registered claim ``key``."""
    _load_all()
    if key not in _REGISTRY:
        raise KeyError(f"no claim {key!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[key]


def all_claims() -> list[Claim]:
    """Every registered claim, in the book's order of chapters (``_toc.yml``), then by key."""
    _load_all()
    order = {slug: k for k, slug in enumerate(chapters())}
    return sorted(_REGISTRY.values(), key=lambda c: (order.get(c.slug, len(order)), c.key))


def _plain(value):
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"check() records plain numbers or strings, got {type(value).__name__}")


def check(key: str, passed: bool, **numbers) -> None:
    """Assert the measurable form of claim ``key``; record its key numbers.

    ``passed`` is the chapter's condition on its measured numbers (which must hold for any seed).
    The numbers are kept in ``RESULTS`` and, if ``$ANATOMY_RESULTS`` names a folder, written there as JSON.
    Returns None, so a notebook cell ending with ``check(...)`` prints nothing more.
    """
    c = get(key)
    recorded = {name: _plain(v) for name, v in numbers.items()}
    RESULTS[key] = recorded
    folder = os.environ.get("ANATOMY_RESULTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{key}.json").write_text(json.dumps({"passed": bool(passed), **recorded}, indent=1))
    if not bool(passed):
        raise AssertionError(
            f"claim {key}: the measured numbers no longer support the verdict '{c.verdict}' "
            f"({c.measure}); numbers: {recorded}"
        )


def recorded(folder: str | os.PathLike | None = None) -> dict[str, dict]:
    """The numbers that the chapters' :func:`check` calls wrote to ``folder`` (default ``$ANATOMY_RESULTS``).

    Returns key -> {"passed": bool, and the recorded numbers}, only for registered claims; an empty dict
    when no folder is given or set, or it does not exist (a chapter run on its own, as in Colab). The book
    build sets ``$ANATOMY_RESULTS`` to a fresh folder, so the scoreboard shows what each chapter measured.
    """
    folder = folder if folder is not None else os.environ.get("ANATOMY_RESULTS")
    if not folder or not Path(folder).is_dir():
        return {}
    known = {c.key for c in all_claims()}
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        if path.stem in known:
            out[path.stem] = json.loads(path.read_text())
    return out
