"""Execute one chapter notebook in a fresh kernel, the way the book build does; report time and errors.

    python scripts/run_notebook.py chapters/01_three_families.ipynb [--out /tmp/out.ipynb] [--timeout 600]
    python scripts/run_notebook.py chapters/06_signal_density.ipynb --cells 5   # and the 5 slowest cells

The notebook runs with the repository root as working directory's parent (like the build), outputs go
to --out (never back into the source notebook, whose outputs stay stripped). Exit status 1 on any
cell error. Peak memory of the kernel is reported when psutil is available.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
import nbclient_poll  # noqa: E402  (no whole-timeout stall after a missed wake-up)

nbclient_poll.apply()


def cell_seconds(cell) -> float | None:
    """How long the kernel was busy with a code cell, from the timing nbclient records in its metadata
    (``record_timing``: ``metadata.execution``, the kernel's busy and idle messages); None if absent."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.status.busy"), timing.get("iopub.status.idle")
    if not (start and end):
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--cells", type=int, default=0, metavar="K", help="also print the K slowest code cells")
    args = ap.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    peak = [0]
    try:
        import psutil
    except ImportError:
        psutil = None

    def sample_memory(**_) -> None:  # after each code cell (nbclient's on_cell_executed hook)
        try:
            peak[0] = max(peak[0], psutil.Process(client.km.provisioner.process.pid).memory_info().rss)
        except Exception:  # noqa: BLE001 (no local kernel process, or it is gone)
            pass

    client = NotebookClient(
        nb,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(args.notebook.parent.resolve())}},
        record_timing=True,  # each code cell's metadata.execution: what --cells reports
        on_cell_executed=sample_memory if psutil is not None else None,
    )
    t0 = time.perf_counter()
    status = 0
    try:
        client.execute()
    except CellExecutionError as exc:
        print(str(exc)[-3000:], file=sys.stderr)
        status = 1
    elapsed = time.perf_counter() - t0  # the whole run, kernel start-up included
    if args.out:
        nbformat.write(nb, args.out)
    mem = f", peak kernel RSS {peak[0] / 2**30:.2f} GiB (sampled after each cell)" if peak[0] else ""
    print(f"{args.notebook}: {'OK' if status == 0 else 'FAILED'} in {elapsed:.1f} s{mem}")
    cell_times = []  # (seconds, index, first line)
    for index, cell in enumerate(nb.cells):
        seconds = cell_seconds(cell) if cell.cell_type == "code" else None
        if seconds is not None:
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            cell_times.append((seconds, index, first))
    for seconds, index, first in sorted(cell_times, reverse=True)[: args.cells]:
        print(f"  {seconds:6.1f} s  cell {index:>2}  {first[:80]}")
    return status


if __name__ == "__main__":
    sys.exit(main())
