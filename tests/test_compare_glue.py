"""scripts/compare_glue.py: a refactor's before/after comparison of the book's glued values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_glue", ROOT / "scripts" / "compare_glue.py")
compare_glue = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_glue)


def _page(folder: Path, values: dict[str, str], timed: frozenset = frozenset()) -> None:
    stored = {
        name: {
            "metadata": {"scrapbook": {"name": name}, **({"anatomy_timed": True} if name in timed else {})},
            "data": {"text/plain": value},
        }
        for name, value in values.items()
    }
    path = folder / "jupyter_execute" / "chapters" / "01_x.glue.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored), encoding="utf-8")


def test_identical_builds_pass(tmp_path):
    _page(tmp_path / "a", {"x": "'1.0'", "t": "'3 ms'"}, frozenset({"t"}))
    _page(tmp_path / "b", {"x": "'1.0'", "t": "'4 ms'"}, frozenset({"t"}))
    assert compare_glue.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    problems, timed, compared = compare_glue.compare(tmp_path / "a", tmp_path / "b")
    assert (problems, len(timed), compared) == ([], 1, 2)


def test_changed_or_missing_values_fail(tmp_path):
    _page(tmp_path / "a", {"x": "'1.0'", "y": "'2'"})
    _page(tmp_path / "b", {"x": "'1.1'", "z": "'2'"})
    assert compare_glue.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    problems, _, _ = compare_glue.compare(tmp_path / "a", tmp_path / "b")
    assert any("x: '1.0' -> '1.1'" in p for p in problems)
    assert any("y only in old" in p for p in problems) and any("z only in new" in p for p in problems)
