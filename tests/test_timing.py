"""anatomy.timing: interleaved repeats, medians, paired ratios, one thread, the CPU clock."""

import time

import pytest
import torch

from anatomy.timing import interleaved_medians, interleaved_times, one_thread, paired_ratio


def test_interleaved_medians_runs_every_variant_in_turn():
    calls = []
    out = interleaved_medians(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1, threads=1
    )
    # one warm-up round, then three interleaved repeats, every other one in reverse (ABBA)
    assert calls == ["a", "b"] + ["a", "b"] + ["b", "a"] + ["a", "b"]
    assert set(out) == {"a", "b"} and all(t >= 0 for t in out.values())
    with pytest.raises(ValueError, match="fns"):
        interleaved_medians({})
    with pytest.raises(TypeError, match="callable"):
        interleaved_medians({"a": 3})
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        interleaved_medians({"a": lambda: None}, warmup=-1)
    with pytest.raises(ValueError, match="clock"):
        interleaved_medians({"a": lambda: None}, clock="gpu")
    with pytest.raises(ValueError, match="threads=1"):
        interleaved_medians({"a": lambda: None}, clock="cpu", threads=2)
    with pytest.raises(ValueError, match="threads=1"):
        interleaved_times({"a": lambda: None}, clock="cpu", threads=None)


def test_interleaved_times_keep_every_repeat_and_paired_ratio():
    calls = []
    times = interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=0
    )
    assert calls == ["a", "b", "b", "a", "a", "b"] and all(len(v) == 3 for v in times.values())
    # each pair is compared with itself: a slowdown shared by both variants of a repeat cancels
    assert paired_ratio([2.0, 20.0, 4.0], [1.0, 10.0, 1.0]) == 2.0
    assert paired_ratio([3.0], [2.0]) == 1.5
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([], [])
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0], [0.0])


def test_threads_are_pinned_while_timing_and_restored():
    before = torch.get_num_threads()
    seen = {}

    def record(key):
        return lambda: seen.setdefault(key, torch.get_num_threads())

    interleaved_times({"a": record("one")}, repeats=1, threads=1)
    interleaved_times({"a": record("kept")}, repeats=1, threads=None)
    assert seen == {"one": 1, "kept": before}
    assert torch.get_num_threads() == before


def test_cpu_clock_counts_work_not_sleep():
    def busy():
        t = time.thread_time()
        while time.thread_time() - t < 0.02:
            pass

    out = interleaved_medians({"sleep": lambda: time.sleep(0.05), "busy": busy}, repeats=2, clock="cpu")
    assert out["sleep"] < 0.01 and out["busy"] >= 0.02
    wall = interleaved_medians({"sleep": lambda: time.sleep(0.05)}, repeats=2, clock="wall")
    assert wall["sleep"] >= 0.05


def test_one_thread_restores_setting_as_block_and_decorator():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

    @one_thread()
    def inside():
        return torch.get_num_threads()

    assert inside() == 1 and torch.get_num_threads() == before
