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
