"""Chapters whose claims rest partly on measured speed must pass while other processes keep the CPU busy.

A reader's machine is rarely idle, and the book's own test run shares its cores with other jobs. Each
chapter listed in ``BUSY_CHAPTERS`` is executed top to bottom in a fresh kernel (as the book build does)
while, besides the chapter's own processes, at least one runnable thread per CPU core competes with it at
the same priority (nice 0 or lower): a failing ``claims.check`` (or any other cell error) fails the test.
The chapter gets about half of the machine, as it would beside one busy loop per core.

A keeper (``LoadKeeper``) counts, every quarter of a second, the runnable threads of every other process at
the chapter's priority (from /proc; niced work does not count), and resumes one busy loop per thread
missing below one per core (stopped again when the others run enough), so the chapter never has an idle
core to itself, whatever else the machine runs.

What competes matters, not only how much: Jupyter starts each kernel in a session of its own, and with the
scheduler's autogroups (Linux, on by default) CPU time is shared between sessions before threads, so the
chapter's kernel gets its session's share. scripts/run_tests.sh runs this file with nothing beside it but
two more pytest processes of tests that start no kernel (unit tests, and the SmolLM2 tests of
anatomy.pretrained, anatomy.packed and the classifier comparison) in its own session, and the loops are
started in that session too: the chapter competes with one session running at least one thread per core,
as it did with the loops alone, and that session's CPU goes to useful tests instead of loops (a loop
only tops up while fewer than one of their threads per core is runnable).
(Beside the other tests, their kernels and the Colab-style runs' kernels each compete as a session: far
more than the loops; tried in aca0bed on the loaded shared machine, chapter 10 took 229 s instead of ~46 s.)
Each chapter's run asserts what the CPU saw: busy at least 90% of the time, at least 0.9 runnable competing
threads per core on average, and those others using at least a quarter of the cores' time.

The timed chapters (8, 9 and 10, named by slug in ``TIMED``; a test checks that they are exactly the
chapters whose code glues a value with ``timed=True``) are the ones whose claim checks use measured times
(causal/full kernel time and whole-model saving; decode vs prefill per token and cache reuse vs recompute;
roofline, encoder vs decoder cost and speculative decoding). Cost on the 2-core machine: about the three
chapters' own run time doubled (see the report printed by each test); ``BUSY_CHAPTERS`` (comma-separated
notebook paths, or ``none``) selects others. Each run is also its chapter's second execution for the
determinism check: with ``ANATOMY_SECOND_RUNS`` set (scripts/run_tests.sh), its glued values are saved there
and compared with the build's after the build (tests/test_determinism.py).
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import book_toc  # (_ext/ is on sys.path, tests/conftest.py: the pages of _toc.yml)
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The timed chapters, by slug (book_toc.chapter raises unless exactly one chapter has it, so a renamed or
# renumbered chapter fails here instead of being skipped)
TIMED = ("causal_kernel", "kv_cache", "inference_economics")
DEFAULT = [f"{book_toc.chapter(slug, ROOT)}.ipynb" for slug in TIMED]

pytestmark = [pytest.mark.book, pytest.mark.slow]

# One busy loop per core: the first process forks the others, so they share one process group that the
# fixture ends with a single killpg. Each writes its pid to the file named by argv[2]. The group stays in
# this process's session: with the scheduler's autogroups, the loops then add to the share of the work that
# runs beside the chapter (scripts/run_tests.sh runs light tests there) instead of competing as a session of
# their own.
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


def _report():
    spec = importlib.util.spec_from_file_location("book_report", ROOT / "scripts" / "book_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def _scan() -> dict[int, tuple[int, int, list[str], int]]:
    """{pid: (parent pid, nice, the state letter of each thread, utime + stime in ticks)} of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            f = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        states = [f[0]]
        if int(f[17]) > 1:  # threads: each has its own state
            states = []
            try:
                tasks = os.listdir(f"/proc/{name}/task")
            except OSError:
                tasks = []
            for tid in tasks:
                try:
                    states.append(
                        Path(f"/proc/{name}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    )
                except (OSError, IndexError):
                    pass
        out[int(name)] = (int(f[1]), int(f[16]), states, int(f[11]) + int(f[12]))
    return out


def _tree(procs: dict, root: int) -> set[int]:
    """root and all its descendants among procs."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


class LoadKeeper:
    """Keeps at least ``cores`` runnable threads at our priority outside this process's tree (this pytest
    process, the chapter's kernel and what it starts), with busy loops (``hogs``, stopped with SIGSTOP until
    needed) making up for what the other processes do not run. ``count`` (tests only) replaces the count of
    the others' runnable threads. Between ``mark()`` and ``measure()``: the mean number of competing
    runnable threads (others and running loops), the CPU time the tree and the others used, and how busy
    the CPUs were."""

    PERIOD = 0.25

    def __init__(self, hogs: list[int], cores: int, count=None):
        self.hogs, self.cores, self.count = hogs, cores, count
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.me = os.getpid()
        self.running = 0  # hogs resumed
        self.recent: list[float] = []
        self.samples: list[float] = []
        self.tree_ticks: dict[int, int] = {}
        self.tree_start: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> LoadKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _set_running(self, n: int) -> None:
        for k, pid in enumerate(self.hogs):
            os.kill(pid, signal.SIGCONT if k < n else signal.SIGSTOP)
        self.running = n

    def _loop(self) -> None:
        while not self._stop.is_set():
            procs = _scan()
            hogs = set(self.hogs)
            tree = _tree(procs, self.me) - hogs  # the loops are this process's children, but count as others
            if self.count is not None:
                others = float(self.count())
            else:
                others = float(
                    sum(
                        states.count("R")
                        for pid, (_, nice, states, _) in procs.items()
                        if pid not in tree and pid not in hogs and nice <= self.nice
                    )
                )
            with self._lock:
                for pid in tree:
                    self.tree_ticks[pid] = procs[pid][3]
                # what competed during the last period: the others and the loops that were running
                self.samples.append(others + self.running)
            self.recent = (self.recent + [others])[-4:]
            missing = self.cores - sum(self.recent) / len(self.recent)
            self._set_running(max(0, min(len(self.hogs), math.ceil(missing - 1e-9))))
            self._stop.wait(self.PERIOD)

    def mark(self) -> None:
        with self._lock:
            self.samples = []
            self.tree_start = dict(self.tree_ticks)
        self.t0, self.busy0 = time.perf_counter(), _cpu_busy_idle()

    def measure(self) -> dict:
        with self._lock:
            samples = list(self.samples)
            tree = sum(t - self.tree_start.get(pid, 0) for pid, t in self.tree_ticks.items())
        elapsed = time.perf_counter() - self.t0
        (b0, i0), (b1, i1) = self.busy0, _cpu_busy_idle()
        tick = os.sysconf("SC_CLK_TCK")
        return {
            "elapsed": elapsed,
            "busy_share": (b1 - b0) / max(1, (b1 - b0) + (i1 - i0)),
            "competing": sum(samples) / max(1, len(samples)),
            "others_cores": max(0.0, (b1 - b0) - tree) / tick / elapsed,
            "tree_cores": tree / tick / elapsed,
        }


def competition_failures(m: dict, cores: int) -> list[str]:
    """Why a chapter's run did not happen on a busy CPU (empty if it did)."""
    out = []
    if m["busy_share"] < 0.9:
        out.append(f"the CPUs were busy only {m['busy_share']:.0%} of the time")
    if m["competing"] < 0.9 * cores:
        out.append(f"{m['competing']:.2f} runnable threads competed on average, fewer than 0.9 per core")
    if m["others_cores"] < 0.25 * cores:
        out.append(f"the other processes used only {m['others_cores']:.2f} cores")
    return out


@pytest.fixture
def hogs(tmp_path):
    """One busy loop per core, each stopped (SIGSTOP) until a LoadKeeper resumes it; one process group in
    this session, ended with a single killpg."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to count the competing threads")
    cores = os.cpu_count() or 2
    pidfile = tmp_path / "hog.pids"
    proc = subprocess.Popen([sys.executable, "-c", HOG, str(cores), str(pidfile)], process_group=0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pidfile.exists() and len(pidfile.read_text().split()) == cores:
                break
            time.sleep(0.1)
        pids = [int(p) for p in pidfile.read_text().split()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield pids
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def busy_cpu(hogs):
    """A LoadKeeper counting the other processes' runnable threads, for the duration of the test."""
    keeper = LoadKeeper(hogs, len(hogs)).start()
    yield keeper
    keeper.stop()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(condition, seconds: float = 20.0) -> bool:
    """Whether `condition()` became true within `seconds` (a loaded machine slows the keeper's scans)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_keeper_runs_a_loop_for_each_missing_thread(hogs):
    """The guarantee does not rest on the other processes: when they run nothing, every loop runs (and the
    chapter's checks below would see the cores busy); when they run enough, the loops are stopped."""
    others = [0]
    keeper = LoadKeeper(hogs, len(hogs), count=lambda: others[0]).start()
    try:
        assert _until(lambda: keeper.running == len(hogs) and all(_state(p) != "T" for p in hogs))
        keeper.mark()
        time.sleep(2)
        m = keeper.measure()
        assert m["competing"] >= len(hogs) and m["others_cores"] > 0.5, m
        others[0] = len(hogs) - 1  # one thread missing: one loop
        assert _until(lambda: keeper.running == 1 and sum(_state(p) == "T" for p in hogs) == len(hogs) - 1)
        others[0] = len(hogs)  # enough: no loop
        assert _until(lambda: keeper.running == 0 and all(_state(p) == "T" for p in hogs))
    finally:
        keeper.stop()


def test_a_quiet_or_niced_neighbourhood_fails_the_check():
    """What the chapters' runs assert can fail: an idle core, too few competitors, or competitors that got
    no CPU (niced ones, say) are each reported."""
    loaded = {"busy_share": 0.99, "competing": 2.0, "others_cores": 1.0}
    assert competition_failures(loaded, 2) == []
    assert competition_failures({**loaded, "busy_share": 0.6}, 2)
    assert competition_failures({**loaded, "competing": 1.0}, 2)
    assert competition_failures({**loaded, "others_cores": 0.1}, 2)


def test_the_timed_chapters_are_the_ones_that_glue_timed_values():
    """TIMED names the chapters that glue wall-clock values (book.glue(..., timed=True)), the ones the build
    executes alone (scripts/execute_chapters.py's plan, whose test in test_workflow checks that rule): a new
    chapter that measures speed, or one that stops, must change TIMED too, so the busy-CPU run follows it."""
    script = ROOT / "scripts" / "execute_chapters.py"
    spec = importlib.util.spec_from_file_location("_execute_chapters", script)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    assert [str(path.relative_to(ROOT)) for path in ex.plan(ROOT)["alone"]] == DEFAULT


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_claims_hold_on_a_busy_cpu(chapter, busy_cpu, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = ROOT / chapter
    assert path.exists(), f"BUSY_CHAPTERS names {chapter}, which does not exist"
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
    busy_cpu.mark()
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{chapter} failed while the CPU was busy:\n{str(err)[-3000:]}")
    m = busy_cpu.measure()
    print(
        f"{chapter}: passed in {m['elapsed']:.0f} s; the CPUs were busy {m['busy_share']:.0%} of the time, "
        f"{m['competing']:.2f} runnable threads competed with it on average, the other processes used "
        f"{m['others_cores']:.2f} cores and the chapter {m['tree_cores']:.2f}"
    )
    # The test means something only if the chapter never had an idle CPU to itself and shared the cores
    # with work at its own priority.
    failures = competition_failures(m, busy_cpu.cores)
    assert not failures, f"{chapter} did not run on a busy CPU: " + "; ".join(failures)
    driven = sum("DRIVEN [{" in "".join(o.get("text", "") for o in c.get("outputs", [])) for c in nb.cells)
    assert driven == live, f"{chapter}: {live} live explorers, {driven} driven"
    # This is also the chapter's second execution: tests/test_determinism.py compares what it glued with
    # the build's values (run_tests.sh sets ANATOMY_SECOND_RUNS), so tests/test_colab_style.py skips it.
    _report().save_second_run(nb, chapter, ROOT, by="tests/test_busy_cpu.py")
