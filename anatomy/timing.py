"""Timing on a shared machine: interleaved repeats, medians, paired ratios, one thread, a CPU clock.

Every speed the book reports is measured here. A busy machine slows whatever runs while another job holds
the core, so variants are timed in turn within each repeat (a slowdown hits them alike), a ratio of two
variants is the median of their back-to-back ratios (:func:`paired_ratio`), and ``clock="cpu"`` counts the
calling thread's CPU time, which time spent waiting for the core does not enter.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from anatomy._checks import check_choice, check_int, check_positive_int, is_number

__all__ = ["CLOCKS", "interleaved_medians", "interleaved_times", "one_thread", "paired_ratio"]

CLOCKS = ("wall", "cpu")


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread inside the block (or the decorated function), then restore the setting.

    Thousands of tiny matrix operations gain nothing from a second thread, and on a busy machine each
    parallel region can wait milliseconds for it (OpenMP's spin-wait when ``OMP_WAIT_POLICY`` is not
    PASSIVE at start-up), which once made a sweep 70x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    *,
    threads: int | None = 1,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds of each function in every repeat; within each repeat every variant runs once, in turn
    (in the given order in even repeats, in reverse in odd ones).

    Args:
        fns: name -> function of no arguments (run under ``torch.inference_mode``).
        repeats: timed rounds; warmup: untimed rounds first.
        threads: torch's intra-op threads while timing (restored afterwards); None keeps the current setting.
        clock: ``"wall"`` measures elapsed time; ``"cpu"`` the CPU time of the calling thread
            (``time.thread_time``), which needs ``threads=1`` so that all the work runs on that thread. On an
            idle machine the two agree; on a shared one, wall-clock time also counts the time other jobs held
            the core, and CPU time does not.

    Returns:
        name -> list of ``repeats`` times, in order, so that the i-th times of two variants were measured
        next to each other (see :func:`paired_ratio`). CUDA work is synchronised before each clock read.
    """
    if not isinstance(fns, Mapping):
        raise TypeError(f"fns must be a mapping name -> function, got {type(fns).__name__}")
    if not fns:
        raise ValueError("fns must name at least one function to time")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"fns[{name!r}] must be callable, got {type(fn).__name__}")
    check_positive_int("repeats", repeats)
    check_int("warmup", warmup, lo=0)
    check_positive_int("threads", threads, none=True)
    check_choice("clock", clock, CLOCKS)
    if clock == "cpu" and threads != 1:
        raise ValueError(f'clock="cpu" times the calling thread only: it needs threads=1, got {threads!r}')
    now = time.perf_counter if clock == "wall" else time.thread_time
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in fns.values():
                    fn()
            times: dict[str, list[float]] = {name: [] for name in fns}
            order = list(fns.items())
            for i in range(repeats):
                # ABBA: odd repeats run the variants in reverse, so that no variant always runs right
                # after the same other one (whose caches, allocations or clock boost it would inherit)
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    sync()
                    t0 = now()
                    fn()
                    sync()
                    times[name].append(now() - t0)
    finally:
        torch.set_num_threads(saved)
    return times


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    *,
    threads: int | None = 1,
    clock: str = "wall",
) -> dict[str, float]:
    """Median seconds of each function, timed as :func:`interleaved_times` does."""
    times = interleaved_times(fns, repeats, warmup, threads=threads, clock=clock)
    return {name: statistics.median(ts) for name, ts in times.items()}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of ``numerator[i] / denominator[i]``: the ratio of two interleaved variants.

    Each pair was measured back to back, so a slowdown that lasts longer than one pair (another job
    starting, a frequency change) scales both and cancels in their ratio, where a ratio of two medians
    would compare times taken under different conditions.
    """
    for name, times in (("numerator", numerator), ("denominator", denominator)):
        if isinstance(times, (str, bytes)) or not hasattr(times, "__len__") or not hasattr(times, "__iter__"):
            raise TypeError(f"{name} must be a sequence of times, got {type(times).__name__}")
        if not all(is_number(t) and math.isfinite(t) for t in times):
            raise ValueError(f"{name} must hold finite times, got {list(times)!r}")
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(
            f"numerator and denominator must be equally long and non-empty, got "
            f"{len(numerator)} and {len(denominator)}"
        )
    if any(d <= 0 for d in denominator):
        raise ValueError("denominator times must be positive")
    return statistics.median(a / b for a, b in zip(numerator, denominator))
