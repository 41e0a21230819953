"""Independent training runs of one experiment, spread over the machine's cores.

Several chapters train a handful of small models that share nothing: each starts from its own seed and
sees its own batches. Each model is too small for two threads to help, so the runs go to separate
processes instead, one per core. The results are the same as a loop: every run seeds itself, computes
exactly what it would in the parent process (with one thread; these models are too small for the thread
count to change their results, which the chapters' glued values confirm), and comes back in order.

Processes are forked (Linux only: the children inherit the parent's memory, so the work may be a closure
over tensors already built); elsewhere, with one core, with one run, or with ``ANATOMY_WORKERS=1``, the
runs happen one after the other in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from anatomy._checks import check_positive_int, is_number

_PENDING: list[Callable[[], Any]] = []
_IN_CHILD = False  # True in a process forked here: its own run_all runs its jobs one after the other


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers(n_runs: int) -> int:
    """How many processes `run_all` uses for `n_runs` runs (1: in this process)."""
    check_positive_int("n_runs", n_runs)
    env = os.environ.get("ANATOMY_WORKERS", "").strip()
    limit = int(env) if env.isdigit() and int(env) >= 1 else _cores()
    if _IN_CHILD or not sys.platform.startswith("linux"):
        return 1
    return max(1, min(limit, n_runs))


def _one_thread() -> None:
    global _IN_CHILD
    _IN_CHILD = True
    # In a Jupyter kernel, sys.stdout/stderr send to the notebook over the kernel's sockets, which belong to
    # the parent: a child writes (warnings included) to the process's own streams instead.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # One thread per process: the processes are the parallelism. It also keeps a forked child out of
    # OpenMP's thread pool, which does not survive a fork (a child that starts OpenMP threads can hang).
    torch.set_num_threads(1)


def _call(i: int) -> Any:
    return _PENDING[i]()


def _rng_state() -> tuple:
    return torch.random.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    torch.random.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def _as_if_forked(job: Callable[[], Any], state: tuple) -> Any:
    """job() in this process as a forked child would run it: from the random state ``state`` (the parent's
    when the child was forked), leaving this process's random state as it was. Without this, a job that
    seeds torch (every training run does) would leave the parent's random state different with one core
    (or ANATOMY_WORKERS=1) than with two, and so whatever the caller draws next."""
    saved = _rng_state()
    _set_rng_state(state)
    try:
        return job()
    finally:
        _set_rng_state(saved)


def run_all(jobs: Sequence[Callable[[], Any]], costs: Sequence[float] | None = None) -> list:
    """[job() for job in jobs], each job in a forked process with one torch thread when there are cores to
    spare, in this process (with the current threads) otherwise. Either way every job starts from this
    process's random state (torch, numpy, random) as it is now and leaves it unchanged. Jobs must not
    depend on each other (seed inside the job); their results must be picklable. costs (optional, one per
    job, any unit): the costliest jobs start first, so that
    the processes finish close together; the results keep the order of `jobs`."""
    global _PENDING
    if isinstance(jobs, (str, bytes)) or not hasattr(jobs, "__iter__"):
        raise TypeError(f"jobs must be a sequence of callables, got {type(jobs).__name__}")
    jobs = list(jobs)
    if not all(callable(job) for job in jobs):
        raise TypeError("jobs must be callables that take no arguments")
    if costs is not None:
        if isinstance(costs, (str, bytes)) or not hasattr(costs, "__len__") or not all(map(is_number, costs)):
            raise TypeError(f"costs must be a sequence of numbers or None, got {costs!r}")
        if len(costs) != len(jobs) or not all(c == c for c in costs):  # c == c: not NaN
            raise ValueError(f"costs must hold one number per job ({len(jobs)}), got {list(costs)!r}")
    n = workers(len(jobs)) if jobs else 1
    if n == 1:
        state = _rng_state()
        return [_as_if_forked(job, state) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -costs[i]) if costs is not None else list(range(len(jobs)))
    _PENDING = jobs  # read by the forked children
    try:
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(n, mp_context=fork, initializer=_one_thread) as pool:
            done = dict(zip(order, pool.map(_call, order)))
    finally:
        _PENDING = []
    return [done[i] for i in range(len(jobs))]


class Background:
    """One job started in a forked process (`start`), its result collected later with `result()`."""

    def __init__(self, job: Callable[[], Any]) -> None:
        global _PENDING
        if not callable(job):
            raise TypeError(f"job must be a callable that takes no arguments, got {type(job).__name__}")
        self._job, self._pool, self._future = job, None, None
        self._state = _rng_state()  # what a forked child starts from
        if workers(2) > 1:
            _PENDING = [job]
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("fork"), initializer=_one_thread
            )
            self._future = self._pool.submit(_call, 0)
            _PENDING = []  # the child has its copy
            # a result never asked for: the pool still shuts down when this object goes away
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    def result(self) -> Any:
        """The job's result: from the process that ran it, or computed now if none was started."""
        if self._future is None:
            return _as_if_forked(self._job, self._state)
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


def start(job: Callable[[], Any]) -> Background:
    """Run ``job()`` in a forked process while this one goes on (in this process, at `result()`, where
    `run_all` would use one process). The job must not depend on torch's global random state."""
    return Background(job)
