"""The book's claims: one registry that the chapters' assertion cells and the scoreboard both use.

Each chapter declares its claims in ``anatomy/claims/chNN.py`` with :func:`claim` (what the source says, in
our words; the verdict the chapter reaches; the measurable form that is checked). The chapter's assertion
cell calls :func:`check` with the measured numbers, so CI fails when the evidence stops supporting the
text; the scoreboard (the last chapter) lists every registered claim with its verdict and key numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VERDICTS = ("supported", "supported with caveats", "contradicted", "not testable here")


@dataclass(frozen=True)
class Claim:
    """One claim from the sources, as a chapter tests it."""

    key: str  # "ch01.prompt_is_causal"
    chapter: int
    seeds: tuple[str, ...]  # source documents, by file number: ("000", "002")
    claim: str  # what the source says, in our words
    verdict: str  # one of VERDICTS: what the chapter's numbers say about the claim
    measure: str  # the measurable form that the chapter's assertion checks
    papers: tuple[str, ...] = ()  # BibTeX keys of the primary sources
    quick: Callable[[], dict] | None = field(default=None, compare=False)  # cheap recomputation (<= 5 s)


_REGISTRY: dict[str, Claim] = {}
RESULTS: dict[str, dict] = {}  # key -> numbers recorded by check() in this process


def claim(key: str, *, chapter: int, seeds: tuple[str, ...], claim: str, verdict: str, measure: str,
          papers: tuple[str, ...] = (), quick: Callable[[], dict] | None = None) -> Claim:
    """Register a claim (called at import time of ``anatomy/claims/chNN.py``)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if not key.startswith(f"ch{chapter:02d}."):
        raise ValueError(f"claim key must start with 'ch{chapter:02d}.', got {key!r}")
    if key in _REGISTRY:
        raise ValueError(f"claim {key!r} is registered twice")
    c = Claim(key, chapter, tuple(seeds), claim, verdict, measure, tuple(papers), quick)
    _REGISTRY[key] = c
    return c


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("ch"):
            importlib.import_module(f"{__name__}.{mod.name}")


def get(key: str) -> Claim:
    """The registered claim ``key``."""
    _load_all()
    if key not in _REGISTRY:
        raise KeyError(f"no claim {key!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[key]


def all_claims() -> list[Claim]:
    """Every registered claim, by chapter then key."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda c: (c.chapter, c.key))


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
