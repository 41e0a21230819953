"""anatomy.experiments.index(): which experiment module serves which chapter, read from the chapters'
imports and the modules' docstrings instead of a hand-kept table (so a new chapter edits no list)."""

import json
import re
import subprocess
import sys
from pathlib import Path

from anatomy import claims, experiments

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    p.stem for p in (ROOT / "anatomy" / "experiments").glob("*.py") if not p.stem.startswith("_")
)


def test_every_experiment_module_is_listed_with_a_summary():
    rows = experiments.index()
    assert [r["module"] for r in rows] == MODULES
    for r in rows:
        assert len(r["summary"]) > 20 and r["summary"].endswith("."), (
            f"anatomy/experiments/{r['module']}.py needs a docstring whose first sentence says what it holds"
        )


def test_every_experiment_module_serves_a_page():
    """Imported by a chapter or the answer page, or by another experiment module that is."""
    rows = {r["module"]: r for r in experiments.index()}
    served = {m for m, r in rows.items() if r["pages"]}
    grew = True
    while grew:
        before = len(served)
        served |= {m for m, r in rows.items() if set(r["used_by"]) & served}
        grew = len(served) > before
    assert served == set(rows), f"experiment modules no page uses: {sorted(set(rows) - served)}"


def test_pages_are_numbered_by_the_table_of_contents():
    rows = {r["module"]: r for r in experiments.index()}
    number = {c.slug: str(c.number) for c in claims.chapters().values()}
    assert rows["capacity"]["pages"] == [number["capacity_compression"]]
    assert number["in_context_learning"] in rows["few_shot"]["pages"]
    assert "the_answer" in rows["answer"]["pages"]
    assert "capacity" in rows["parallel"]["used_by"]


def test_the_import_scan_reads_every_form():
    code = (
        "from anatomy.experiments import record as rec\n"
        "from anatomy.experiments import (\n    kv_cache,\n    kv_cache_plots,\n)\n"
        "from anatomy.experiments import icl, few_shot  # two\n"
        "import anatomy.experiments.rank\n"
        "from anatomy.experiments.capacity import MLPStudents\n"
        "from anatomy import experiments\n"
    )
    assert experiments._imported(code) == {
        "record", "kv_cache", "kv_cache_plots", "icl", "few_shot", "rank", "capacity"
    }  # fmt: skip


def test_a_module_without_a_docstring_has_no_summary(tmp_path):
    path = tmp_path / "orphan.py"
    path.write_text("x = 1\n")
    assert experiments._summary(path) == ""
    path.write_text('"""Toy pairs: counts. More text."""\n')
    assert experiments._summary(path) == "Toy pairs: counts."


def test_python_dash_m_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "anatomy.experiments"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.splitlines()[0].split()[:2] == ["module", "chapters"]
    assert len(out.splitlines()) == len(MODULES) + 1
    json.dumps(experiments.index())  # plain data


def test_a_summary_that_names_a_chapter_names_one_it_serves():
    """A module's summary may say which chapter it serves; the number must then be one of its pages
    (inserting a chapter renumbers the pages, and a summary that kept the old number would be wrong)."""
    for row in experiments.index():
        named = set(re.findall(r"\b[Cc]hapters? (\d+)", row["summary"] or ""))
        assert named <= set(row["pages"]), (
            f"{row['module']}: its summary names chapter {sorted(named)}, its pages are {row['pages']}"
        )
