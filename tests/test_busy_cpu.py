"""Chapters whose claims rest partly on measured speed must pass while another process keeps the CPU busy.

A reader's machine is rarely idle, and the book's own test run shares its cores with other jobs. Each
chapter listed in ``BUSY_CHAPTERS`` is executed top to bottom in a fresh kernel (as the book build does)
while a separate process runs one busy loop per CPU core; a failing ``claims.check`` (or any other cell
error) fails the test. The hog runs at the same priority as the chapter, so the chapter gets about half
of the machine.

Chapters 8, 9 and 10 are the ones whose claim checks use measured times (causal/full kernel time and
whole-model saving; decode vs prefill per token and cache reuse vs recompute; roofline, encoder vs
decoder cost and speculative decoding). Cost on the 2-core machine: about the three chapters' own run time
doubled (see the report printed by each test); ``BUSY_CHAPTERS`` (comma-separated notebook paths, or
``none``) selects others. Each run is also its chapter's second execution for the determinism check: with
``ANATOMY_SECOND_RUNS`` set (scripts/run_tests.sh), its glued values are saved there and compared with the
build's after the build (tests/test_determinism.py).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [
    "chapters/08_causal_kernel.ipynb",
    "chapters/09_kv_cache.ipynb",
    "chapters/10_inference_economics.ipynb",
]

pytestmark = [pytest.mark.book, pytest.mark.slow]

# One busy loop per core: the first process forks the others, so they share one process group that the
# fixture ends with a single killpg. Each writes its pid to the file named by argv[2].
HOG = """
import os, sys
n, pidfile = int(sys.argv[1]), sys.argv[2]
for _ in range(n - 1):
    if os.fork() == 0:
        break
with open(pidfile, "a") as f:
    f.write(f"{os.getpid()}\\n")
x = 0
while True:
    x += 1
"""


def _chapters() -> list[str]:
    wanted = os.environ.get("BUSY_CHAPTERS", ",".join(DEFAULT)).strip()
    return [] if wanted == "none" else [c for c in wanted.split(",") if c]


def _cpu_busy_idle() -> tuple[int, int]:
    """(busy, idle) clock ticks of all CPUs since boot, from /proc/stat (idle includes iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, idle


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report():
    spec = importlib.util.spec_from_file_location("book_report", ROOT / "scripts" / "book_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


@pytest.fixture
def busy_cpu(tmp_path):
    """A process group spinning one busy loop per core for the duration of the test; yields a function
    that returns the CPU seconds the loops have used so far."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to confirm that the busy loops ran")
    cores = os.cpu_count() or 2
    pidfile = tmp_path / "hog.pids"
    proc = subprocess.Popen([sys.executable, "-c", HOG, str(cores), str(pidfile)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pidfile.exists() and len(pidfile.read_text().split()) == cores:
                break
            time.sleep(0.1)
        pids = [int(p) for p in pidfile.read_text().split()]
        yield lambda: sum(_cpu_seconds(p) for p in pids)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_claims_hold_on_a_busy_cpu(chapter, busy_cpu, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = ROOT / chapter
    if not path.exists():
        pytest.skip(f"{chapter} does not exist")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ANATOMY_RESULTS", raising=False)
    nb = nbformat.read(path, as_version=4)
    # after each live explorer a cell moves its controls (book.drive_live, ipywidgets 8), as the Colab-style
    # run of tests/test_colab_style.py does for the chapters it executes
    cells, live = [], 0
    for k, cell in enumerate(nb.cells):
        cells.append(cell)
        if cell.cell_type == "code" and "explore_live(" in cell.source:
            live += 1
            cells.append(
                nbformat.v4.new_code_cell(
                    "from anatomy import book as _b\nprint('DRIVEN', _b.drive_live())", id=f"drive{k}"
                )
            )
    nb.cells = cells
    # an empty working directory, as in Colab: the chapter must need no repository file beside it (this run
    # stands in for the chapter's Colab-style run in tests/test_colab_style.py, which checks the same)
    workdir = tmp_path / "content"
    workdir.mkdir()
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    hog_before, t0, (busy0, idle0) = busy_cpu(), time.perf_counter(), _cpu_busy_idle()
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{chapter} failed while the CPU was busy:\n{str(err)[-3000:]}")
    elapsed = time.perf_counter() - t0
    hog_cores = (busy_cpu() - hog_before) / elapsed
    busy1, idle1 = _cpu_busy_idle()
    busy_share = (busy1 - busy0) / max(1, (busy1 - busy0) + (idle1 - idle0))
    print(
        f"{chapter}: passed in {elapsed:.0f} s; the CPUs were busy {busy_share:.0%} of the time, the busy "
        f"loops used {hog_cores:.2f} cores on average"
    )
    # The test means something only if the chapter never had an idle CPU to itself. (On a machine that is
    # already loaded the loops get less than their two cores, which is as busy as a CPU gets.)
    assert hog_cores > 0 and busy_share >= 0.9, (
        f"the CPUs were busy only {busy_share:.0%} of the time (busy loops: {hog_cores:.2f} cores)"
    )
    driven = sum("DRIVEN [{" in "".join(o.get("text", "") for o in c.get("outputs", [])) for c in nb.cells)
    assert driven == live, f"{chapter}: {live} live explorers, {driven} driven"
    # This is also the chapter's second execution: tests/test_determinism.py compares what it glued with
    # the build's values (run_tests.sh sets ANATOMY_SECOND_RUNS), so tests/test_colab_style.py skips it.
    _report().save_second_run(nb, chapter, ROOT, by="tests/test_busy_cpu.py")
