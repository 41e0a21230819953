"""The book's claims: one registry that the chapters' assertion cells and the scoreboard both use.

Each chapter declares its claims in ``anatomy/claims/<slug>.py`` with :func:`claim` (what the source says,
in our words; the verdict the chapter reaches; the measurable form that is checked). The slug is the
chapter's file name without its number (``chapters/07_in_context_learning.ipynb``: ``in_context_learning``)
and every key starts with it (``in_context_learning.induction_phase_change``). The chapter's assertion cell
calls :func:`check` with the measured numbers, so CI fails when the evidence stops supporting the text; the
scoreboard (the last chapter) lists every registered claim with its verdict and key numbers.

No chapter number is written down here: :func:`chapters` reads each chapter's number from its place in
``_toc.yml``, so a chapter inserted before others changes no key and no claims file.
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


def toc_pages(toc_text: str) -> list[str]:
    """The pages of the numbered parts' chapters in a jb-book ``_toc.yml``, in order, without suffix."""
    import yaml  # only here: an installed wheel reads INDEX instead

    toc = yaml.safe_load(toc_text) or {}
    return [
        re.sub(r"\.(ipynb|md)$", "", str(c["file"]))
        for part in toc.get("parts", [])
        if part.get("numbered")
        for c in part.get("chapters", [])
    ]


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
        pages = toc_pages(TOC.read_text(encoding="utf-8"))
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
