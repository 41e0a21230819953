"""Compare the glued values of two book builds, page by page.

A build stores each executed page's glued values in ``_build/jupyter_execute/**/NAME.glue.json``. A change
that only moves code (a refactor) must leave every value identical; values measured on the wall clock
(glued with ``book.glue(..., timed=True)``) may differ and are listed apart.

    python scripts/compare_glue.py OLD_BUILD NEW_BUILD
    python scripts/compare_glue.py /tmp/old/_build/jupyter_execute _build/jupyter_execute

Each argument is a build folder (``_build``), its ``jupyter_execute`` folder, or any folder holding
``*.glue.json`` files in the same relative places. Exits 1 when an untimed value differs, a page or a
value exists on one side only, or no page is found at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMED_KEY = "anatomy_timed"  # the flag anatomy.book.glue(..., timed=True) puts in the output's metadata


def glue_files(folder: Path) -> dict[str, Path]:
    """Relative page path (without ``.glue.json``) -> file, for every stored page under `folder`."""
    folder = Path(folder)
    if (folder / "jupyter_execute").is_dir():
        folder = folder / "jupyter_execute"
    if not folder.is_dir():
        raise SystemExit(f"compare_glue: {folder} is not a folder")
    return {str(p.relative_to(folder))[: -len(".glue.json")]: p for p in sorted(folder.rglob("*.glue.json"))}


def load(path: Path) -> tuple[dict[str, str | None], set[str]]:
    """The page's glued values (name -> text/plain) and the names flagged as timed."""
    stored = json.loads(path.read_text(encoding="utf-8"))
    values = {name: out.get("data", {}).get("text/plain") for name, out in stored.items()}
    timed = {name for name, out in stored.items() if out.get("metadata", {}).get(TIMED_KEY)}
    return values, timed


def compare(old: Path, new: Path) -> tuple[list[str], list[str], int]:
    """(differences, timed differences, number of values compared)."""
    a, b = glue_files(old), glue_files(new)
    if not a or not b:
        raise SystemExit(f"compare_glue: no *.glue.json under {old if not a else new}")
    problems, timed_changes, compared = [], [], 0
    for page in sorted(set(a) | set(b)):
        if page not in b or page not in a:
            problems.append(f"{page}: only in {'old' if page in a else 'new'} build")
            continue
        (va, ta), (vb, tb) = load(a[page]), load(b[page])
        for name in sorted(set(va) | set(vb)):
            if name not in vb or name not in va:
                problems.append(f"{page}: {name} only in {'old' if name in va else 'new'} build")
                continue
            compared += 1
            if va[name] != vb[name]:
                line = f"{page}: {name}: {va[name]} -> {vb[name]}"
                (timed_changes if name in ta | tb else problems).append(line)
    return problems, timed_changes, compared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    problems, timed_changes, compared = compare(args.old, args.new)
    print(
        f"{compared} glued values compared; {len(timed_changes)} timed values differ (allowed), "
        f"{len(problems)} untimed differences"
    )
    for line in timed_changes:
        print("  timed  ", line)
    for line in problems:
        print("  DIFFERS", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
