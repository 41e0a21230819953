"""Compare two benchmark records (the JSON files benches/*.py write) line by line.

    python benches/compare.py benches/results/attention-OLD.json benches/results/attention-NEW.json

Rows are matched on their key columns (the non-numeric values and integer sizes such as ``n`` or
``threads``); every numeric column present in both prints old, new and new/old. The two machines are
printed first: a ratio against a peer measured in the same run transfers between machines, an absolute
time does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEY_COLUMNS = ("n", "threads", "turn", "metric", "variant")


def _key(row: dict) -> tuple:
    return tuple((k, row[k]) for k in KEY_COLUMNS if k in row)


def compare(old: dict, new: dict) -> list[str]:
    """Lines of text: the two machines, then each matched row's numeric columns old -> new."""
    if old.get("benchmark") != new.get("benchmark"):
        raise ValueError(
            f"records are of different benchmarks: {old.get('benchmark')!r} vs {new.get('benchmark')!r}"
        )
    lines = []
    for label, rec in (("old", old), ("new", new)):
        m = rec.get("machine", {})
        lines.append(
            f"{label}: {m.get('date')} {m.get('cpu')} threads={m.get('threads')} load "
            f"{m.get('load_average_1min')} torch {m.get('torch')} commit {m.get('commit')}; "
            f"targets met: {rec.get('all_targets_met')}"
        )
    old_rows = {_key(r): r for r in old.get("rows", [])}
    for row in new.get("rows", []):
        key = _key(row)
        label = ", ".join(f"{k}={v}" for k, v in key) or "(row)"
        if key not in old_rows:
            lines.append(f"{label}: only in the new record")
            continue
        before = old_rows[key]
        for col, value in row.items():
            if col in KEY_COLUMNS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if isinstance(before.get(col), (int, float)) and not isinstance(before.get(col), bool):
                ratio = value / before[col] if before[col] else float("nan")
                lines.append(f"{label}: {col:<24} {before[col]:>12.4g} -> {value:>12.4g}  (x{ratio:.3f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    records = [json.loads(p.read_text()) for p in (args.old, args.new)]
    try:
        print("\n".join(compare(*records)))
    except ValueError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
