"""Determinism: executing a chapter again gives the same glued values as the book build did.

The strict book build (``scripts/build_book.sh``) executes every chapter and myst-nb stores each
chapter's glued values in ``_build/jupyter_execute/chapters/NN_slug.glue.json``. This test executes some
chapters a second time, in a fresh kernel, and compares every glued value as text. Values measured on
the wall clock (glued with ``book.glue(..., timed=True)``, which flags the output) are exempt: the
contract allows timings to vary (ARCHITECTURE.md, the chapter contract), and a chapter must not use them in a
claim's condition without a noise margin.

Which chapters run again: ``DETERMINISM_CHAPTERS`` (comma-separated stems, ``all``, or ``none``); by
default chapter 11, a training run with several models, the kind of computation most likely to drift
(about a minute). ``scripts/run_tests.sh`` sets ``none``: there, every chapter is executed a second time
once, by whichever test runs it anyway. tests/test_busy_cpu.py (chapters 8-10, on a busy CPU),
tests/test_colab_env.py (chapters 1, 5 and 13, in the Colab-pinned environment) and tests/test_publish.py
(chapter 4, from the built wheel) run before the build and save their glued values in
``$ANATOMY_SECOND_RUNS``, and so does tests/test_colab_style.py for every other chapter, executed
Colab-style beside them and the build (``COLAB_CHAPTERS=unclaimed``, ``COLAB_SAVE_ONLY=1``);
``test_earlier_run_gives_the_same_glued_values`` compares each saved record whose code (chapter and package)
equals the work tree's with the build's values.
Every chapter gets the cheap half of the check: its build stored glued values, and none of them is an
object's repr with a memory address (which would differ from run to run).

Needs a built book; ``scripts/run_tests.sh`` runs this file after the build (``ANATOMY_REQUIRE_BOOK=1``
turns a missing build into a failure instead of a skip).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "_build" / "jupyter_execute" / "chapters"
DEFAULT = ["11_mixture_of_experts"]
ADDRESS = re.compile(r"0x[0-9a-f]{6,}", re.I)

pytestmark = [pytest.mark.book]


def _missing(reason: str):
    if os.environ.get("ANATOMY_REQUIRE_BOOK") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _toc_stems() -> list[str]:
    text = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    return [Path(f).name for f in re.findall(r"^\s*-?\s*file:\s*chapters/(\S+?)(?:\.ipynb)?\s*$", text, re.M)]


def _report():
    spec = importlib.util.spec_from_file_location("book_report", ROOT / "scripts" / "book_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def _build_glue(stem: str) -> tuple[dict[str, str], set[str]]:
    path = EXECUTED / f"{stem}.glue.json"
    if not path.exists():
        _missing(f"no glued values for {stem} in {EXECUTED}: build the book (bash scripts/build_book.sh)")
    return _report().build_glue(path)


def _chosen() -> list[str]:
    wanted = os.environ.get("DETERMINISM_CHAPTERS", ",".join(DEFAULT))
    stems = _toc_stems()
    if wanted.strip() == "none":
        return []
    return stems if wanted.strip() == "all" else [s for s in wanted.split(",") if s]


@pytest.mark.parametrize("stem", _toc_stems())
def test_build_stored_plain_glued_values(stem):
    values, _ = _build_glue(stem)
    assert values, f"{stem}: the build stored no glued values (does the chapter glue its numbers?)"
    with_address = {k: v for k, v in values.items() if v and ADDRESS.search(v)}
    assert not with_address, f"{stem}: glued values that contain memory addresses: {with_address}"


def test_the_timed_flag_is_the_packages():
    from anatomy import book

    assert _report().TIMED_KEY == book.TIMED_KEY


@pytest.mark.slow
@pytest.mark.parametrize("stem", _chosen())
def test_second_run_gives_the_same_glued_values(stem, tmp_path):
    build, timed = _build_glue(stem)
    notebook = ROOT / "chapters" / f"{stem}.ipynb"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    result = _report().execute(notebook, tmp_path / f"{stem}.ipynb")
    assert result["error"] is None, f"{stem} failed on its second run:\n{result['error']}"
    _compare(stem, build, timed, result["glue"], result["timed"], "a second run")


def _records() -> dict[str, dict]:
    return _report().second_runs(ROOT)


def _compare(stem: str, build: dict, timed: set, again: dict, again_timed: set, what: str) -> None:
    assert set(again) == set(build), f"{stem}: different glued names: {sorted(set(again) ^ set(build))}"
    assert again_timed == timed, f"{stem}: different timed values: {sorted(again_timed ^ timed)}"
    differ = {k: (build[k], again[k]) for k in sorted(set(build) - timed) if build[k] != again[k]}
    assert not differ, (
        f"{stem}: glued values changed between the build and {what} (build, second run): {differ}. "
        "Seed everything from book.setup(); glue a wall-clock measurement with book.glue(..., timed=True)."
    )


@pytest.mark.parametrize("stem", sorted(_records()))
def test_earlier_run_gives_the_same_glued_values(stem):
    """A chapter's run before the build (on a busy CPU, or in the Colab-pinned environment) glued what
    the build glued. Only records whose code equals the work tree's are collected (second_runs)."""
    record = _records().get(stem)
    assert record is not None, f"{stem}: the record of its earlier run went stale during this session"
    build, timed = _build_glue(stem)
    if "printed" in record:  # a run without myst-nb (Colab-pinned environment): book.glue printed the values
        missing = _report().printed_mismatches(build, timed, record["printed"])
        assert not missing, (
            f"{stem}: its run in {record['by']} did not print these values of the build (expected lines): "
            f"{missing}. Seed everything from book.setup(); glue a wall-clock measurement with "
            "book.glue(..., timed=True)."
        )
        return
    _compare(stem, build, timed, record["glue"], set(record["timed"]), f"its run in {record['by']}")


def test_printed_values_are_compared_like_glued_ones():
    """The comparison for runs without myst-nb (values printed as ``name = value``) can fail."""
    report = _report()
    build, timed = {"a": "0.5", "b": "'x y'", "m": "'two\\nlines'", "t": "1.25"}, {"t"}
    assert report.printed_mismatches(build, timed, "a = 0.5\nb = x y\nm = two\nlines\nt = 9.0") == {}
    assert report.printed_mismatches(build, timed, "a = 0.50\nb = x y\nm = two\nlines") == {"a": "a = 0.5"}
    assert set(report.printed_mismatches(build, timed, "a = 0.5\nb = 'x y'\nm = two")) == {"b", "m"}
