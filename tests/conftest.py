"""Shared test settings: Hypothesis profiles, and the worst kernel errors the property tests saw.

Profiles (``pytest --hypothesis-profile=NAME``):
  * ``ci`` (the default): derandomized, so a run is reproducible; the property tests in
    ``test_properties.py`` draw a few thousand kernel cases in well under a minute.
  * ``long``: random (a new search every run) and ``LONG_FACTOR`` times as many examples, for a run
    of an hour or so before a release: ``pytest tests/test_properties.py --hypothesis-profile=long``.
Tests that set ``max_examples`` themselves scale it with :func:`examples`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Every test that executes a notebook in this process (busy-CPU runs, determinism, widgets...) gets the
# fix for nbclient's missed wake-up, which otherwise stalls a cell for its whole timeout now and then (a
# clean-clone run hung 7 minutes in a busy-CPU chapter before this was applied here).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
import nbclient_poll  # noqa: E402

nbclient_poll.apply()

LONG_FACTOR = 40

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True)
settings.register_profile(
    "long",
    max_examples=100 * LONG_FACTOR,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Filled by the kernel property tests: {(dtype name, backend): [cases, worst error, worst error / bound]}.
KERNEL_STATS: dict[tuple[str, str], list] = {}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny tensors gain nothing from a second thread, and on a busy 2-core machine a second OpenMP thread
    waiting in a barrier made such tests up to 3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(n: int) -> int:
    """``n`` examples under the ci profile, scaled with the loaded profile's max_examples."""
    return max(1, round(n * settings.default.max_examples / 100))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _triton_group and not _triton_ran:
        terminalreporter.section("Triton interpreter tests", red=True)
        terminalreporter.write_line(
            f"FAILED: {len(_triton_group)} Triton interpreter tests were selected and none ran (each skipped "
            "because the other copy runs them, which this process did not select): see tests/conftest.py"
        )
    if not KERNEL_STATS:
        return
    terminalreporter.section("kernel property tests: cases and worst error per dtype and backend")
    total = 0
    for (dtype, backend), (cases, worst, ratio) in sorted(KERNEL_STATS.items()):
        total += cases
        terminalreporter.write_line(
            f"{dtype:>9} {backend:>9}: {cases:>6} cases, worst |out - float64| = {worst:.3g} "
            f"({ratio:.2f} of its bound)"
        )
    terminalreporter.write_line(f"total: {total} kernel cases")


# ------------------------------------------------------------------------------------------------------
# The Triton interpreter tests of tests/test_triton.py run either in the process that collects the module
# (triton not imported before it) or in a child process started by test_interpreter_tests_in_a_child_process
# (triton imported earlier, or a GPU); the other copy skips. A selection can therefore skip them in both
# ways at once (a run once deselected the child test where the copies skipped, and selected it alone where
# it skipped), and nothing but the skip count would show it. So: in a process that selects any of them, at
# least one must really run (a call that passed or failed), or the session fails.
#
# scripts/run_tests.sh runs them in another pytest process than the rest of the suite, with
#   ANATOMY_TRITON_INTERPRETER_TESTS=elsewhere  this process deselects them (another one runs them); its
#                                               child processes get neither variable;
#   ANATOMY_TRITON_INTERPRETER_TESTS=only       this process runs them and deselects the module's other
#                                               tests; triton is imported here first, so the module takes
#                                               its child-process path (the interpreter's flag stays out of
#                                               this process's environment and the chapters it runs);
#   ANATOMY_TRITON_RECORD=FILE                  a process that selected them appends how many ran, so that
#                                               run_tests.sh can check that some process ran them.
TRITON_SPLIT = os.environ.get("ANATOMY_TRITON_INTERPRETER_TESTS", "")
TRITON_RECORD = os.environ.get("ANATOMY_TRITON_RECORD", "")
if TRITON_SPLIT not in ("", "elsewhere", "only"):
    raise ValueError(f"ANATOMY_TRITON_INTERPRETER_TESTS={TRITON_SPLIT!r}: expected 'elsewhere' or 'only'")
if TRITON_SPLIT == "elsewhere":
    # not for the child processes of this one: test_kernel_under_colab_gpu_triton's child runs the whole
    # module under Colab's Triton, interpreter tests included (and is no record of this run's own)
    os.environ.pop("ANATOMY_TRITON_INTERPRETER_TESTS")
    os.environ.pop("ANATOMY_TRITON_RECORD", None)
if TRITON_SPLIT == "only":
    try:
        import triton  # noqa: F401
    except ImportError:
        pass

CHILD_TEST = "test_interpreter_tests_in_a_child_process"
_triton_group: set[str] = set()
_triton_ran: set[str] = set()


def triton_interpreter_items(items) -> list:
    """The items of tests/test_triton.py that run the Triton interpreter: the child-process test and every
    test marked with the module's ``interpreted`` skipif."""
    group = []
    for item in items:
        module = getattr(item, "module", None)
        if module is None or Path(str(item.fspath)).name != "test_triton.py":
            continue
        mark = getattr(getattr(module, "interpreted", None), "mark", None)
        if getattr(item, "originalname", item.name) == CHILD_TEST or (
            mark is not None and mark in item.iter_markers("skipif")
        ):
            group.append(item)
    return group


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    group = set(triton_interpreter_items(items))
    if TRITON_SPLIT == "elsewhere":
        drop = [it for it in items if it in group]
    elif TRITON_SPLIT == "only":
        drop = [it for it in items if Path(str(it.fspath)).name == "test_triton.py" and it not in group]
    else:
        drop = []
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if it not in drop]
    _triton_group.clear()
    _triton_group.update(it.nodeid for it in items if it in group)


def pytest_runtest_logreport(report):
    if report.nodeid in _triton_group and report.when == "call" and not report.skipped:
        _triton_ran.add(report.nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if not _triton_group:
        return
    record = TRITON_RECORD
    if record:
        ran = f"{len(_triton_ran)} of {len(_triton_group)}"
        with open(record, "a", encoding="utf-8") as f:
            f.write(f"{ran} Triton interpreter tests ran (pid {os.getpid()})\n")
    if not _triton_ran and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
