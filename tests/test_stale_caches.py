"""The cached test environments do not pile up (scripts/colab_env.py's prune_stale).

A clean clone's test run builds a Triton overlay of its own (tests/test_triton.py) and a change of the
Colab pins a new 1.5 GB base environment; before prune_stale, these stayed until the disk was full and
pip failed with "No space left on device".
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("colab_env", ROOT / "scripts" / "colab_env.py")
colab_env = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab_env)


def _env(root: Path, name: str, age_s: float, complete: str | None = "x\n") -> Path:
    path = root / name
    path.mkdir()
    (path / "payload").write_text("weights")
    stamp = path / ".complete" if complete is not None else path
    if complete is not None:
        stamp.write_text(complete)
    then = time.time() - age_s
    os.utime(stamp, (then, then))
    return path


def test_prune_stale_removes_old_and_orphaned_environments_only(tmp_path):
    hour = 3600.0
    keep = _env(tmp_path, "base-000000000001", age_s=100 * hour)  # old, but the one in use: stays
    recent = _env(tmp_path, "base-000000000002", age_s=0.5 * hour)  # another checkout may be in it: stays
    old = _env(tmp_path, "base-000000000003", age_s=7 * hour)
    unfinished = _env(tmp_path, "building-abc", age_s=7 * hour, complete=None)
    orphan = _env(tmp_path, "base-00000000000a", age_s=0.1 * hour, complete=f"3.6.0\n{tmp_path / 'gone'}\n")
    alive = _env(tmp_path, "base-00000000000b", age_s=0.1 * hour, complete=f"3.6.0\n{tmp_path}\n")
    # not ours by name (the cache directory can be set to a shared place): never touched, however old
    other = _env(tmp_path, "base-of-something-else", age_s=700 * hour)
    a_file = tmp_path / "base-000000000004"
    a_file.write_text("not a directory")
    os.utime(a_file, (0, 0))

    def gone(path: Path) -> bool:
        lines = (path / ".complete").read_text().splitlines()
        return len(lines) > 1 and not Path(lines[1]).exists()

    removed = colab_env.prune_stale(tmp_path, colab_env.BASE_NAMES, keep=keep, gone=gone)
    assert sorted(removed) == sorted([old, unfinished, orphan])
    assert sorted(tmp_path.iterdir()) == sorted([keep, recent, alive, other, a_file])
    assert (keep / "payload").read_text() == "weights"
    assert colab_env.prune_stale(tmp_path / "no-cache-yet", colab_env.BASE_NAMES, keep=keep) == []
