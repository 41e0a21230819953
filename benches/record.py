"""What every benchmark prints first and saves last: the machine it ran on, and a JSON record of its table.

A benchmark calls :func:`header` before timing (CPU model, cores, threads, load average, library versions)
and :func:`save` after, with its rows and its targets. The record goes to ``benches/results/NAME-STAMP.json``
(or the path given by ``--json``), so that a later run can be compared with this one by
``python benches/compare.py OLD.json NEW.json`` instead of by eye.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine(threads: int | None = None) -> dict:
    """Facts about this machine and run that decide how its timings compare with another run's."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),  # libgomp: spins before a thread sleeps
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def header(threads: int | None = None) -> dict:
    """Print the machine line; return the same facts (keep them for :func:`save`)."""
    m = machine(threads)
    gpu = f", GPU {m['cuda']}" if m["cuda"] else ", no CUDA device"
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, threads={m['threads']}, load average "
        f"{m['load_average_1min']:.2f}{gpu}; python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}; commit {m['commit']}"
    )
    return m


def save(
    name: str,
    machine_info: dict,
    rows: list[dict],
    targets: dict,
    met: bool | None,
    path: str | os.PathLike | None = None,
) -> Path:
    """Write the run's record as JSON; print and return where it went.

    ``rows``: the table, one dict per line, plain numbers and strings. ``targets``: what each ratio must
    reach (for the reader of the record). ``met``: whether this run met every target (None: nothing was
    judged, e.g. a bench without targets, or without the rows they apply to).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    record = {
        "benchmark": name,
        "machine": machine_info,
        "rows": rows,
        "targets": targets,
        "all_targets_met": None if met is None else bool(met),
    }
    if path is None:
        stamp = machine_info.get("date", "").replace(":", "").replace("-", "")[:15] or "run"
        path = RESULTS / f"{name}-{stamp}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record: {path}")
    return path


def add_json_argument(parser) -> None:
    """The ``--json PATH`` option every benchmark takes."""
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write this run's JSON record (default: benches/results/NAME-DATE.json)",
    )
