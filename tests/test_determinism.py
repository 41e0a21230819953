"""Determinism: executing a chapter again gives the same glued values as the book build did.

The strict book build (``scripts/build_book.sh``) executes every chapter and myst-nb stores each
chapter's glued values in ``_build/jupyter_execute/chapters/NN_slug.glue.json``. This test executes some
chapters a second time, in a fresh kernel, and compares every glued value as text. Values measured on
the wall clock (glued with ``book.glue(..., timed=True)``, which flags the output) are exempt: the
contract allows timings to vary (ARCHITECTURE.md, the chapter contract), and a chapter must not use them in a
claim's condition without a noise margin.

Which chapters run again: ``DETERMINISM_CHAPTERS`` (comma-separated stems, ``all``, or ``none``); by default
the mixture-of-experts chapter (found by its slug), a training run with several models, the kind of
computation most likely to drift (about a minute). ``scripts/run_tests.sh`` sets ``none``: there, every
chapter is executed a second time once, by whichever test runs it anyway. tests/test_busy_cpu.py (its
chapters, on a busy CPU), tests/test_colab_env.py (its chapters, in the Colab-pinned environment) and
tests/test_publish.py (its chapter, from the built wheel) run before the build and save their glued values in
``$ANATOMY_SECOND_RUNS``, and so does tests/test_colab_style.py for every other chapter, executed Colab-style
beside them and the build (``COLAB_CHAPTERS=unclaimed``, ``COLAB_SAVE_ONLY=1``);
``test_earlier_run_gives_the_same_glued_values`` compares each saved record whose code (chapter and package)
equals the work tree's with the build's values, and fails for a chapter of the table of contents that has no
such record, unless a test collected in the same session executes it again and compares at once (this file's
``DETERMINISM_CHAPTERS``; tests/test_colab_style.py, which run_tests.sh runs after this file with
``COLAB_CHAPTERS=unrecorded``) or the work tree's code differs from the committed HEAD, untracked files
included, which the Colab-style runs execute (nothing comparable: skipped, saying so). Without
``ANATOMY_SECOND_RUNS`` (pytest run alone) it skips.
Every chapter gets the cheap half of the check: its build stored glued values, and none of them is an
object's repr with a memory address (which would differ from run to run).

Needs a built book; ``scripts/run_tests.sh`` runs this file after the build (``ANATOMY_REQUIRE_BOOK=1``
turns a missing build into a failure instead of a skip).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the one reader of _toc.yml
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "_build" / "jupyter_execute" / "chapters"
DEFAULT_SLUG = "mixture_of_experts"  # the chapter executed again by default, by slug (not by number)
ADDRESS = re.compile(r"0x[0-9a-f]{6,}", re.I)

pytestmark = [pytest.mark.book]


def _missing(reason: str):
    if os.environ.get("ANATOMY_REQUIRE_BOOK") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _toc_stems() -> list[str]:
    return [Path(page).name for page in book_toc.chapters(ROOT)]


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
    """The stems DETERMINISM_CHAPTERS names (by default the chapter whose slug is DEFAULT_SLUG, or the slug
    itself when no chapter has it, which test_second_run_gives_the_same_glued_values then fails)."""
    stems = _toc_stems()
    default = [s for s in stems if s.split("_", 1)[-1] == DEFAULT_SLUG] or [DEFAULT_SLUG]
    wanted = os.environ.get("DETERMINISM_CHAPTERS", ",".join(default)).strip()
    if wanted == "none":
        return []
    return stems if wanted == "all" else [s.strip() for s in wanted.split(",") if s.strip()]


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
    assert stem in _toc_stems(), f"{stem} (DETERMINISM_CHAPTERS or its default) is no chapter of _toc.yml"
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


def _compared_here(stem: str, items) -> str | None:
    """The id of a test among `items` (this session's) that executes chapter `stem` again and compares its
    glued values with the build's at once, or None: this file's second run, or tests/test_colab_style.py's
    Colab-style run (unless it only saves its values, COLAB_SAVE_ONLY=1)."""
    compares = {"test_second_run_gives_the_same_glued_values": "stem"}
    if os.environ.get("COLAB_SAVE_ONLY") != "1":
        compares["test_chapter_runs_from_an_installed_package"] = "chapter"
    for item in items:
        param = compares.get(getattr(item, "originalname", ""))
        callspec = getattr(item, "callspec", None)
        if param and callspec and Path(str(callspec.params.get(param, ""))).stem == stem:
            return item.nodeid
    return None


def _code_differs_from_head(stem: str, root: Path = ROOT) -> bool:
    """True when the code a run of chapter `stem` hashes (book_report.code_files: the chapter and every file
    of anatomy/, untracked ones too) differs from the committed HEAD's, or git cannot tell."""
    chapter = f"chapters/{stem}.ipynb"
    diff = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "anatomy", chapter], cwd=root, capture_output=True
    )
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", "anatomy", chapter], cwd=root, capture_output=True
    )
    if diff.returncode != 0 or tracked.returncode != 0:
        return True
    hashed = {p.relative_to(root).as_posix() for p in _report().code_files(root, chapter)}
    return hashed != {f for f in tracked.stdout.decode().split("\0") if f}


def _earlier_run(stem: str, items) -> dict:
    """The saved record of chapter `stem`'s second run, made of the work tree's code. Without one, the test
    fails, or skips (saying why) when nothing could be compared: no build, no ANATOMY_SECOND_RUNS (a skip,
    or a failure with ANATOMY_REQUIRE_BOOK=1), a test of this session that compares the chapter itself, or
    a record of other code while the work tree's code differs from the committed HEAD (the Colab-style, the
    Colab-pinned and the wheel's runs execute a clone of HEAD, so no run of this code can be saved)."""
    build = EXECUTED / f"{stem}.glue.json"
    if not build.exists():
        _missing(f"no glued values for {stem} in {EXECUTED}: build the book (bash scripts/build_book.sh)")
    record = _records().get(stem)
    if record is not None:
        return record
    other = _compared_here(stem, items)
    if other:
        pytest.skip(f"{stem}: no saved second run; {other} executes it again in this session and compares")
    where = os.environ.get(_report().SECOND_RUNS_ENV)
    if not where:
        _missing(f"{stem}: no second runs saved (no ANATOMY_SECOND_RUNS; scripts/run_tests.sh sets it)")
    saved = Path(where) / f"{stem}.json"
    if saved.exists() and _code_differs_from_head(stem):
        by = json.loads(saved.read_text(encoding="utf-8")).get("by", "a test")
        pytest.skip(
            f"{stem}: its saved run ({by}) ran other code than the work tree's, which differs from the"
            " committed HEAD (uncommitted or untracked files in anatomy/ or the chapter): nothing comparable"
        )
    pytest.fail(
        f"{stem}: no second run of this code in {where} "
        + (
            "(its record is of other code: the code changed after that run)"
            if saved.exists()
            else "(no record)"
        )
        + ", so its determinism was not checked: a chapter of _toc.yml that no test executed a second time "
        + f"(run it again here: DETERMINISM_CHAPTERS={stem} pytest tests/test_determinism.py)"
    )


@pytest.mark.parametrize("stem", _toc_stems())
def test_earlier_run_gives_the_same_glued_values(stem, request):
    """A chapter's run before the build (on a busy CPU, in the Colab-pinned environment, from the wheel or
    Colab-style) glued what the build glued. Every chapter of _toc.yml needs a record whose code equals the
    work tree's (second_runs), unless this session compares it otherwise (see _earlier_run)."""
    record = _earlier_run(stem, request.session.items)
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


def test_a_chapter_without_a_second_run_fails(tmp_path, monkeypatch):
    """The completeness half can fail: a built chapter with no saved second run fails, and is let off only
    when this session compares it otherwise, its record is of other code while the work tree differs from
    HEAD (nothing comparable), or nothing was saved at all."""
    monkeypatch.setitem(globals(), "EXECUTED", tmp_path / "build")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "01_x.glue.json").write_text('{"n": {"data": {"text/plain": "1"}}}')
    monkeypatch.delenv("ANATOMY_REQUIRE_BOOK", raising=False)
    monkeypatch.delenv("COLAB_SAVE_ONLY", raising=False)
    monkeypatch.setenv("ANATOMY_SECOND_RUNS", str(tmp_path / "runs"))
    with pytest.raises(pytest.fail.Exception, match="01_x: no second run of this code .*no record"):
        _earlier_run("01_x", [])

    class Item:  # a collected Colab-style run of the chapter, which compares at once
        originalname = "test_chapter_runs_from_an_installed_package"
        callspec = type("CallSpec", (), {"params": {"chapter": "chapters/01_x.ipynb"}})
        nodeid = "tests/test_colab_style.py::test_chapter_runs_from_an_installed_package[01_x]"

    with pytest.raises(pytest.skip.Exception, match="test_colab_style.py"):
        _earlier_run("01_x", [Item])
    monkeypatch.setenv("COLAB_SAVE_ONLY", "1")  # then it only saves: no comparison in this session
    with pytest.raises(pytest.fail.Exception, match="no record"):
        _earlier_run("01_x", [Item])
    (tmp_path / "runs").mkdir()  # a record of other code than the work tree's (its chapter is not here)
    (tmp_path / "runs" / "01_x.json").write_text('{"chapter": "chapters/01_x.ipynb", "fingerprint": "0"}')
    monkeypatch.setitem(globals(), "_code_differs_from_head", lambda stem: False)
    with pytest.raises(pytest.fail.Exception, match="its record is of other code"):
        _earlier_run("01_x", [])
    monkeypatch.setitem(globals(), "_code_differs_from_head", lambda stem: True)  # uncommitted changes
    with pytest.raises(pytest.skip.Exception, match="differs from the committed HEAD"):
        _earlier_run("01_x", [])
    monkeypatch.delenv("ANATOMY_SECOND_RUNS")
    with pytest.raises(pytest.skip.Exception, match="no ANATOMY_SECOND_RUNS"):
        _earlier_run("01_x", [])


def test_untracked_code_differs_from_head(tmp_path):
    """An untracked file in anatomy/ changes the fingerprint of every run from the work tree, and git diff
    does not show it: the work tree then differs from HEAD (a skip for a record of HEAD, not 'other code')."""

    def git(*args):
        identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run(["git", *identity, *args], cwd=tmp_path, check=True)

    (tmp_path / "anatomy").mkdir()
    (tmp_path / "chapters").mkdir()
    (tmp_path / "anatomy" / "a.py").write_text("a = 1\n")
    (tmp_path / "chapters" / "01_x.ipynb").write_text("{}")
    git("init", "-q")
    git("add", "anatomy", "chapters")
    git("commit", "-q", "-m", "x")
    assert not _code_differs_from_head("01_x", tmp_path)
    (tmp_path / "anatomy" / "__pycache__").mkdir()  # compiled files are not hashed
    (tmp_path / "anatomy" / "__pycache__" / "a.cpython.pyc").write_bytes(b"\0")
    assert not _code_differs_from_head("01_x", tmp_path)
    (tmp_path / "anatomy" / "b.py").write_text("b = 2\n")  # untracked
    assert _code_differs_from_head("01_x", tmp_path)
    (tmp_path / "anatomy" / "b.py").unlink()
    (tmp_path / "anatomy" / "a.py").write_text("a = 2\n")  # changed
    assert _code_differs_from_head("01_x", tmp_path)
    assert _code_differs_from_head("02_new", tmp_path)  # a chapter that HEAD lacks (git ls-files omits it)
