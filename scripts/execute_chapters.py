"""Execute the book's notebooks before the build, two at a time, into the jupyter-cache the build then reads.

    python scripts/execute_chapters.py --cache _build/.jupyter_cache [--jobs 2]
    python scripts/execute_chapters.py --list      # which notebook runs where, and nothing else

Why: a chapter keeps about one core busy over its run (measured on the 2-core machine: CPU time / wall time
of a quiet run 1.0-1.3 for most chapters, up to 1.7 for the few that train in parallel processes), so two at
a time nearly halve the build's execution. ``scripts/build_book.sh`` runs this, then builds with a copy of
``_config.yml`` whose ``execute_notebooks`` is ``cache``: myst-nb finds every notebook executed here in the
cache (it matches the code cells) and executes only the others itself. ``_config.yml`` itself stays
``force``, so a plain ``jupyter-book build .`` (another seed, say) still executes every chapter. The cache is
emptied before every build: every chapter is still executed at every build.

Which notebook runs where (the table of contents' order otherwise):

* a notebook that glues wall-clock values (``timed=True``) runs alone, with no other notebook beside it, so
  the times the book prints are measured as a one-by-one build would measure them (scripts/run_tests.sh
  runs its Colab-style chapter runs beside the build at nice 19, and names them in
  ``ANATOMY_PAUSE_BESIDE_TIMED``: they are stopped from the first timed notebook until the last is done,
  so they share neither a core nor the memory bandwidth with it);
* a notebook that reads what the other chapters recorded (``claims.recorded(``, or the answer module: the
  scoreboard and the answer page) is left to the build, which executes it after every other page;
* the others run ``--jobs`` at a time, the longest first (by the seconds each took the last time, kept in
  ``chapter_seconds.json`` beside the cache).

Each notebook is executed as myst-nb executes it in the build (jupyter_cache's ``single_nb_execution``, in
the notebook's folder, with ``_config.yml``'s timeout, no errors allowed, nbclient_poll applied), in a
child process of its own, then stored in the cache by this process. A notebook that fails is not stored,
so the build executes it again and reports the error in its usual way; this script then exits 1, and
build_book.sh fails even if that second execution passes (a flaky chapter is not hidden).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "_ext") not in sys.path:  # book_toc, nbclient_poll (standard library / nbclient only)
    sys.path.insert(0, str(ROOT / "_ext"))
import book_toc  # noqa: E402  (the one reader of _toc.yml)

TIMED = re.compile(r"timed\s*=\s*True")
READS_RECORDS = re.compile(
    r"claims\.recorded\(|from anatomy\.experiments import answer|experiments\.answer\b"
)


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook page of _toc.yml (root first), in the table of contents' order."""
    paths = [root / f"{page}.ipynb" for page in book_toc.pages(root)]
    return [path for path in paths if path.exists()]


_code = book_toc.notebook_code  # a notebook's code cells, as one text


def plan(root: Path = ROOT) -> dict[str, list[Path]]:
    """{"together": [...], "alone": [...], "build": [...]} as described in the module docstring."""
    out: dict[str, list[Path]] = {"together": [], "alone": [], "build": []}
    for path in toc_notebooks(root):
        code = _code(path)
        kind = "build" if READS_RECORDS.search(code) else "alone" if TIMED.search(code) else "together"
        out[kind].append(path)
    return out


def timeout(root: Path = ROOT) -> int:
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    return int((config.get("execute") or {}).get("timeout", 30))


# ------------------------------------------------------------------------------------ one notebook


def execute_one(path: Path, out: Path, seconds: int) -> int:
    """Child process: execute one notebook as myst-nb does; write it to `out`; print its time as JSON."""
    import nbclient_poll  # _ext/ (on sys.path above): what the build's Sphinx process applies (no stall)
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nbclient_poll.apply()
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)  # myst-nb's standard_nb_read
    result = single_nb_execution(
        nb, cwd=str(path.parent.resolve()), timeout=seconds, allow_errors=False, meta_override=True
    )
    if result.err is not None:
        print(result.exc_string, file=sys.stderr)
        return 1
    nbformat.write(nb, out)
    import resource

    cpu = sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )  # this process and the kernel, which nbclient has shut down and waited for
    print(json.dumps({"seconds": result.time, "cpu": cpu}))
    return 0


# ------------------------------------------------------------------------------------ the scheduler


class Run:
    """One notebook executed by a child process of this script (``--one``). Its output, and that of the
    kernel and of the processes a chapter forks (which write to the kernel's own streams), goes to a file,
    never to a pipe that nobody reads while the chapter runs."""

    def __init__(self, path: Path, tmp: Path, seconds: int):
        self.path = path
        self.out = tmp / f"{path.stem}.ipynb"
        self.log = tmp / f"{path.stem}.log"
        self.start = time.perf_counter()
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(path),
            "--out",
            str(self.out),
            "--timeout",
            str(seconds),
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self) -> tuple[dict | None, float]:
        """({"seconds", "cpu"} or None if it failed, wall time)."""
        self.proc.wait()
        wall = time.perf_counter() - self.start
        lines = [
            ln
            for ln in self.log.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.startswith("{")
        ]
        ok = self.proc.returncode == 0 and lines and '"seconds"' in lines[-1]
        return (json.loads(lines[-1]) if ok else None), wall


class Paused:
    """The side jobs of scripts/run_tests.sh (process ids in ``ANATOMY_PAUSE_BESIDE_TIMED``), and all their
    descendants, stopped (SIGSTOP) while a chapter that glues wall-clock times executes, and continued after.

    Those jobs run at nice 19, which keeps them off a busy core, but a timed chapter that uses one thread
    leaves the other core idle, and a job there would still share the memory bandwidth and the last-level
    cache that chapter measures. Stopped, a job only waits, as it would if starved of CPU.
    """

    def __init__(self) -> None:
        self.pids = [int(p) for p in os.environ.get("ANATOMY_PAUSE_BESIDE_TIMED", "").split() if p.strip()]
        self.stopped: list = []

    def stop(self) -> None:
        if self.stopped or not self.pids:
            return
        import psutil

        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:  # finished already
                continue
            for proc in procs:
                try:
                    proc.suspend()
                    self.stopped.append(proc)
                except psutil.Error:
                    pass
        if self.stopped:
            print(
                f"execute_chapters: {len(self.stopped)} side processes stopped while the timed chapters run"
            )

    def resume(self) -> None:
        import psutil

        for proc in self.stopped:
            try:
                proc.resume()
            except psutil.Error:
                pass
        self.stopped = []


def _store(cache, run: Run, seconds: float) -> str:
    """Put an executed notebook into the cache; return how the build will find it."""
    import nbformat
    from jupyter_cache.base import CacheBundleIn

    nb = nbformat.read(run.out, as_version=4)
    cache.cache_notebook_bundle(
        CacheBundleIn(nb, str(run.path), data={"execution_seconds": seconds}),
        check_validity=False,
        overwrite=True,
    )
    try:  # the build matches the source notebook (its code cells) to this record
        cache.match_cache_notebook(nbformat.reads(run.path.read_text(encoding="utf-8"), as_version=4))
    except KeyError:
        return "stored, but the source does not match it (the build will execute it again)"
    return "cached"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="the jupyter-cache folder the build reads (emptied first)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("ANATOMY_BUILD_JOBS", "2")))
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return execute_one(args.one, args.out, args.timeout or timeout())
    groups = plan()
    if args.list:
        for kind, paths in groups.items():
            print(f"{kind}: {' '.join(str(p.relative_to(ROOT)) for p in paths)}")
        return 0
    if args.cache is None or args.jobs < 1:
        ap.error("--cache DIR is required, and --jobs must be >= 1")

    import shutil

    from jupyter_cache import get_cache

    if args.cache.exists():
        shutil.rmtree(args.cache)
    cache = get_cache(str(args.cache))
    history_path = args.cache.parent / "chapter_seconds.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else {}
    together = sorted(groups["together"], key=lambda p: -history.get(p.stem, 0))  # longest first
    seconds = timeout()
    failed, took, cpu = [], {}, 0.0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anatomy-execute-") as tmp:
        queue = [(p, args.jobs) for p in together] + [(p, 1) for p in groups["alone"]]
        alone = set(groups["alone"])
        running: list[Run] = []
        paused = Paused()
        try:
            while queue or running:
                # start what may start: a notebook of the "alone" group only when nothing else runs,
                # and with the processes named in ANATOMY_PAUSE_BESIDE_TIMED stopped meanwhile
                while queue and len(running) < queue[0][1]:
                    if queue[0][0] in alone:
                        paused.stop()
                    running.append(Run(queue.pop(0)[0], Path(tmp), seconds))
                time.sleep(0.2)
                for run in [r for r in running if r.proc.poll() is not None]:
                    running.remove(run)
                    result, wall = run.wait()
                    name = str(run.path.relative_to(ROOT))
                    if result:
                        took[run.path.stem] = round(wall, 1)
                        cpu += result["cpu"]
                        print(
                            f"execute_chapters: {name} executed in {wall:.1f} s (CPU {result['cpu']:.1f} s), "
                            + _store(cache, run, result["seconds"])
                        )
                    else:
                        failed.append(name)
                        again = "the build executes it again"
                        print(f"execute_chapters: {name} FAILED after {wall:.1f} s ({again}):")
                        print(run.log.read_text(encoding="utf-8")[-4000:])
                    sys.stdout.flush()
        finally:
            paused.resume()
    history.update(took)
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_path.write_text(json.dumps(history, indent=1, sort_keys=True) + "\n")
    left = " ".join(str(p.relative_to(ROOT)) for p in groups["build"])
    print(
        f"execute_chapters: {len(took)} notebooks executed in {time.perf_counter() - t_all:.0f} s, CPU "
        f"{cpu:.0f} s ({args.jobs} at a time, the timed ones alone); the build executes "
        f"{left or 'nothing else'}"
    )
    if failed:
        print(f"execute_chapters: FAILED: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
