#!/usr/bin/env python3
"""Execute every chapter in its own process and report wall time and peak memory against the budgets.

    .venv/bin/python scripts/book_report.py                   # every chapter in _toc.yml
    .venv/bin/python scripts/book_report.py chapters/11_mixture_of_experts.ipynb
    .venv/bin/python scripts/book_report.py --check           # exit 1 if a budget is exceeded
    .venv/bin/python scripts/book_report.py --json report.json

Each chapter runs in a fresh Python process (``book_report.py --one NB``) that executes the notebook with
nbclient in a fresh kernel, the kernel's working directory being the notebook's folder, as in the book
build. The wall time covers the whole execution including kernel start-up; the peak memory is the
kernel's maximum resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` once the kernel has exited),
which is exact, unlike sampling. The budgets of the chapter contract (ARCHITECTURE.md): at most 90 s and
under 3 GiB per chapter; the speed targets: at most 60 s per chapter and 300 s for the whole book on the
2-core machine (a chapter over its target is flagged; --check fails only on the budgets).

Wall times depend on what else runs on the machine: the report prints the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "_ext") not in sys.path:  # book_toc, nbclient_poll (standard library / nbclient only)
    sys.path.insert(0, str(ROOT / "_ext"))
import book_toc  # noqa: E402  (the one reader of _toc.yml)

# Output metadata flag of a glued value measured on the wall clock (``book.glue(..., timed=True)``; the
# same string as anatomy.book.TIMED_KEY). Such values may differ between two runs (ARCHITECTURE.md,
# the chapter contract); the determinism checks skip them and compare every other glued value as text.
TIMED_KEY = "anatomy_timed"
BUDGET_SECONDS = 90.0
BUDGET_BYTES = 3 * 2**30
BUDGET_TOTAL_SECONDS = 600.0
TARGET_SECONDS = 60.0
TARGET_TOTAL_SECONDS = 300.0


def toc_chapters(root: Path = ROOT) -> list[Path]:
    """The chapter notebooks listed in ``root/_toc.yml``, in order."""
    return [Path(root) / f"{page}.ipynb" for page in book_toc.chapters(root)]


def glued_values(nb) -> dict[str, str]:
    """name -> text/plain of every value a notebook glued (myst-nb's scrapbook outputs)."""
    values = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:  # the mime type carries a prefix: application/papermill.record/text/plain
                data = out.get("data", {})
                values[name] = next((v for k, v in data.items() if k.endswith("text/plain")), None)
    return values


def timed_names(nb) -> set[str]:
    """Names of the glued values of an executed notebook that were glued with ``timed=True``."""
    return {
        out["metadata"]["scrapbook"]["name"]
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("metadata", {}).get(TIMED_KEY) and "scrapbook" in out["metadata"]
    }


def build_glue(path: Path) -> tuple[dict[str, str], set[str]]:
    """The glued values a build stored in ``NN_slug.glue.json`` (name -> text/plain), and the timed names."""
    stored = json.loads(Path(path).read_text(encoding="utf-8"))
    values = {name: out.get("data", {}).get("text/plain") for name, out in stored.items()}
    return values, {name for name, out in stored.items() if out.get("metadata", {}).get(TIMED_KEY)}


# --------------------------------------------------------------------------- second runs, for determinism
# Every chapter is executed a second time somewhere in scripts/run_tests.sh and its glued values compared
# with the build's. Runs that happen anyway before the build (tests/test_busy_cpu.py: chapters on a busy
# CPU; tests/test_colab_env.py: chapters in the Colab-pinned environment) save what they
# glued into the folder named by ``ANATOMY_SECOND_RUNS``; after the build, tests/test_determinism.py
# compares those records with the build's values, and tests/test_colab_style.py executes only the chapters
# without a record.
SECOND_RUNS_ENV = "ANATOMY_SECOND_RUNS"


def code_files(root: Path, chapter: str) -> list[Path]:
    """The files whose bytes :func:`code_fingerprint` hashes: the notebook ``root/chapter``, then every file
    of ``root/anatomy`` (compiled files excepted, untracked ones included)."""
    root = Path(root)
    return [root / chapter] + sorted(
        p
        for p in (root / "anatomy").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def code_fingerprint(root: Path, chapter: str) -> str:
    """A hash of the code a chapter's run executes: the notebook ``root/chapter`` and every file of
    ``root/anatomy`` (compiled files excepted). Equal fingerprints: a run and the build ran the same code."""
    import hashlib

    h = hashlib.sha256()
    root = Path(root)
    for path in code_files(root, chapter):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def save_second_run(nb, chapter: str, root: Path, by: str) -> Path | None:
    """Record the glued values of an executed chapter (an nbformat notebook) in ``$ANATOMY_SECOND_RUNS``
    (nothing when it is unset); `root` is the tree whose code ran, `by` names the test."""
    where = os.environ.get(SECOND_RUNS_ENV)
    if not where:
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    path = Path(where) / f"{Path(chapter).stem}.json"
    record = {
        "chapter": chapter,
        "by": by,
        "fingerprint": code_fingerprint(root, chapter),
        "glue": glued_values(nb),
        "timed": sorted(timed_names(nb)),
    }
    if not record["glue"]:
        # Without myst-nb (the Colab-pinned environment) book.glue prints each value as ``name = value``
        # instead: keep the printed text, and compare it with the build's values (printed_matches).
        record["printed"] = "\n".join(
            "".join(o.get("text", ""))
            for c in nb.cells
            for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stdout"
        )
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return path


def printed_value(text_plain: str) -> str:
    """What ``book.glue`` prints for a value whose myst-nb text/plain is `text_plain` (``str`` of the value,
    where text/plain is its ``repr``)."""
    import ast

    try:
        return str(ast.literal_eval(text_plain))
    except (ValueError, SyntaxError):
        return text_plain


def printed_mismatches(build: dict[str, str], timed: set[str], printed: str) -> dict[str, str]:
    """name -> the line expected but not printed, for every untimed value of the build that a run without
    myst-nb did not print as ``name = value`` (the whole value, also when it spans several lines)."""
    text = "\n" + printed + "\n"
    return {
        name: line
        for name in sorted(set(build) - timed)
        if "\n" + (line := f"{name} = {printed_value(build[name])}") + "\n" not in text
    }


def second_runs(root: Path = ROOT) -> dict[str, dict]:
    """stem -> record of every saved second run whose code equals ``root``'s now (a stale record, made before
    the chapter or the package changed, is left out: that chapter needs another second run)."""
    where = os.environ.get(SECOND_RUNS_ENV)
    records = {}
    for path in sorted(Path(where).glob("*.json")) if where and Path(where).is_dir() else []:
        record = json.loads(path.read_text(encoding="utf-8"))
        chapter = record["chapter"]
        if (Path(root) / chapter).exists() and record["fingerprint"] == code_fingerprint(root, chapter):
            records[Path(chapter).stem] = record
    return records


def execute(notebook: Path, out: Path | None = None, timeout: int = 900, cwd: Path | None = None) -> dict:
    """Execute `notebook` in a fresh kernel (in this process); return seconds, error and glued values."""
    import nbclient_poll  # no whole-timeout stall after a missed wake-up
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nbclient_poll.apply()

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str((cwd or notebook.parent).resolve())}},
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc)[-2000:]
    seconds = time.perf_counter() - start
    if out is not None:
        nbformat.write(nb, out)
    return {"seconds": seconds, "error": error, "glue": glued_values(nb), "timed": timed_names(nb)}


def run_one(notebook: Path, out: Path | None = None) -> dict:
    """Execute one chapter in a child process; return its wall time, the kernel's peak RSS and status."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(notebook)]
    if out is not None:
        cmd += ["--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {
            "notebook": str(notebook),
            "wall": wall,
            "seconds": wall,
            "peak_bytes": 0,
            "error": (proc.stderr or proc.stdout)[-2000:] or f"exit {proc.returncode}",
        }
    result = json.loads(lines[-1])
    result.update(notebook=str(notebook), wall=wall)
    return result


def _child(notebook: Path, out: Path | None) -> int:
    result = execute(notebook, out)
    # The kernel was a child of this process and has been waited for: its peak RSS is in RUSAGE_CHILDREN.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"seconds": result["seconds"], "peak_bytes": peak, "error": result["error"]}))
    return 0


def report(results: list[dict]) -> tuple[str, bool]:
    """A plain-text table of the results and whether every budget was met."""
    ok = True
    rows = [f"{'chapter':42s} {'seconds':>8s} {'peak GiB':>9s}  status"]
    total = 0.0
    for r in results:
        total += r["seconds"]
        problems = []
        if r.get("error"):
            problems.append("FAILED")
        if r["seconds"] > BUDGET_SECONDS:
            problems.append(f"> {BUDGET_SECONDS:.0f} s")
        if r["peak_bytes"] >= BUDGET_BYTES:
            problems.append(">= 3 GiB")
        ok &= not problems
        if not problems and r["seconds"] > TARGET_SECONDS:
            problems.append(f"over the {TARGET_SECONDS:.0f} s target")
        rows.append(
            f"{Path(r['notebook']).stem:42s} {r['seconds']:8.1f} {r['peak_bytes'] / 2**30:9.2f}  "
            f"{'ok' if not problems else ', '.join(problems)}"
        )
    total_ok = total <= BUDGET_TOTAL_SECONDS
    ok &= total_ok
    verdict = "ok" if total_ok else f"> {BUDGET_TOTAL_SECONDS:.0f} s"
    if total_ok and total > TARGET_TOTAL_SECONDS:
        verdict = f"over the {TARGET_TOTAL_SECONDS:.0f} s target"
    rows.append(f"{'total':42s} {total:8.1f} {'':9s}  {verdict}")
    rows.append(
        f"budgets: <= {BUDGET_SECONDS:.0f} s and < 3 GiB per chapter, "
        f"<= {BUDGET_TOTAL_SECONDS / 60:.0f} min in total (targets {TARGET_SECONDS:.0f} s and "
        f"{TARGET_TOTAL_SECONDS:.0f} s); load average now "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on "
        f"{os.cpu_count()} CPUs"
    )
    return "\n".join(rows), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter in _toc.yml")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a chapter fails or a budget is exceeded"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _child(args.one, args.out)

    notebooks = [p.resolve() for p in args.notebooks] or toc_chapters()
    results = []
    for nb in notebooks:
        r = run_one(nb)
        results.append(r)
        status = "FAILED" if r.get("error") else "ok"
        print(f"  {nb.stem}: {r['seconds']:.1f} s, {r['peak_bytes'] / 2**30:.2f} GiB, {status}", flush=True)
        if r.get("error"):
            print("    " + r["error"].strip().replace("\n", "\n    ")[-1500:], file=sys.stderr)
    table, ok = report(results)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
