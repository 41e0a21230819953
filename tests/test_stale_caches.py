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


def _env(root: Path, name: str, age_s: float, complete: str | None = "x\n", venv: bool = False) -> Path:
    path = root / name
    path.mkdir()
    (path / "payload").write_text("weights")
    if venv:
        (path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    if complete is not None:
        (path / ".complete").write_text(complete)
    then = time.time() - age_s
    for f in (path / ".complete", path / "pyvenv.cfg", path):
        if f.exists():
            os.utime(f, (then, then))
    return path


HOUR = 3600.0


def test_prune_stale_removes_old_base_environments_and_crashed_builds_only(tmp_path):
    keep = _env(tmp_path, "base-000000000001", age_s=100 * HOUR)  # old, but the one in use: stays
    recent = _env(tmp_path, "base-000000000002", age_s=0.5 * HOUR)  # another checkout may be in it: stays
    old = _env(tmp_path, "base-000000000003", age_s=7 * HOUR)
    crashed = _env(tmp_path, "building-abc_1234", age_s=7 * HOUR, complete=None, venv=True)
    # not the cache's by name (a prefix of the name matches; the whole name does not), by content (no
    # .complete, no pyvenv.cfg) or by kind (a file): never touched, however old
    longer = _env(tmp_path, "base-000000000004-mine", age_s=700 * HOUR)
    other = _env(tmp_path, "building-notes", age_s=700 * HOUR, venv=True)
    not_env = _env(tmp_path, "base-000000000005", age_s=700 * HOUR, complete=None)
    a_file = tmp_path / "base-000000000006"
    a_file.write_text("not a directory")
    os.utime(a_file, (0, 0))

    removed = colab_env.prune_stale(tmp_path, colab_env.BASE_NAMES, keep=keep)
    assert sorted(removed) == sorted([old, crashed])
    assert sorted(tmp_path.iterdir()) == sorted([keep, recent, longer, other, not_env, a_file])
    assert (keep / "payload").read_text() == "weights"
    assert colab_env.prune_stale(tmp_path / "no-cache-yet", colab_env.BASE_NAMES, keep=keep) == []


def test_prune_stale_removes_triton_overlays_of_checkouts_that_are_gone(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    mine = _env(
        cache, "triton-3.6.0-00000000aa", age_s=0.1 * HOUR, complete=f"3.6.0\n{checkout}\n", venv=True
    )
    orphan = _env(
        cache, "triton-3.6.0-00000000bb", age_s=0.1 * HOUR, complete=f"3.6.0\n{tmp_path / 'gone'}\n"
    )
    alive = _env(cache, "triton-3.6.0-00000000cc", age_s=0.1 * HOUR, complete=f"3.6.0\n{checkout}\n")
    unused = _env(cache, "triton-3.6.0-00000000dd", age_s=7 * HOUR, complete="3.6.0\n")  # older format
    packages = _env(cache, "triton-3.6.0-packages-00000000ee", age_s=0.1 * HOUR)
    old_packages = _env(cache, "triton-3.5.1-packages-00000000ff", age_s=7 * HOUR)

    removed = colab_env.prune_stale(cache, colab_env.TRITON_OVERLAY_NAMES, keep=mine, gone=colab_env.orphaned)
    assert sorted(removed) == sorted([orphan, unused])  # never a package set: not an overlay's name
    removed = colab_env.prune_stale(cache, colab_env.TRITON_PACKAGES_NAMES, keep=packages)
    assert removed == [old_packages]
    assert sorted(cache.iterdir()) == sorted([mine, alive, packages])
