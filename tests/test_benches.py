"""The benchmark records: what benches/record.py writes is what benches/compare.py reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

import compare  # noqa: E402
import record  # noqa: E402


def _record(tmp_path, name, rows, met=True):
    machine = record.machine(threads=1)
    path = record.save(name, machine, rows, {"ratio": 1.0}, met, tmp_path / f"{name}.json")
    return json.loads(path.read_text())


def test_record_holds_the_machine_and_the_rows(tmp_path):
    rec = _record(tmp_path, "attention", [{"threads": 1, "n": 1024, "tiled/sdpa causal": 0.97}])
    assert rec["benchmark"] == "attention"
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["threads"] == 1
    assert isinstance(rec["machine"]["load_average_1min"], float)
    assert rec["rows"] == [{"threads": 1, "n": 1024, "tiled/sdpa causal": 0.97}]
    assert rec["all_targets_met"] is True


def test_compare_matches_rows_on_their_keys(tmp_path):
    old = _record(
        tmp_path, "a", [{"threads": 1, "n": 1024, "ratio": 1.2}, {"threads": 1, "n": 2048, "ratio": 1.0}]
    )
    new = _record(
        tmp_path, "a", [{"threads": 1, "n": 2048, "ratio": 0.5}, {"threads": 2, "n": 2048, "ratio": 3.0}]
    )
    lines = compare.compare(old, new)
    assert any("n=2048" in ln and "ratio" in ln and "(x0.500)" in ln for ln in lines), lines
    assert any("threads=2" in ln and "only in the new record" in ln for ln in lines), lines
    assert not any("n=1024" in ln for ln in lines[2:]), lines


def test_compare_refuses_records_of_different_benchmarks(tmp_path):
    with pytest.raises(ValueError, match="different benchmarks"):
        compare.compare(_record(tmp_path, "a", []), _record(tmp_path, "b", []))


def test_generate_bench_skips_its_gpu_column_in_one_line_without_cuda(monkeypatch, capsys):
    import generate  # benches/generate.py

    monkeypatch.setattr(generate.torch.cuda, "is_available", lambda: False)
    assert generate.gpu_row(None, None, None, None, None, 64) is None  # nothing is touched
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["GPU column: skipped: no CUDA device (torch.cuda.is_available() is False)"]
    assert generate.gpu_status(None).startswith("skipped: no CUDA device")
    assert generate.gpu_status({"gpu": "H100"}) == "the row with variant 'GPU (cuda)' (H100)"


def test_train_bench_skips_its_gpu_column_in_one_line_without_cuda(monkeypatch, capsys):
    import train_throughput  # benches/train_throughput.py

    monkeypatch.setattr(train_throughput.torch.cuda, "is_available", lambda: False)
    assert train_throughput.gpu_row(None) is None  # nothing is touched
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["GPU column: skipped: no CUDA device (torch.cuda.is_available() is False)"]
    assert train_throughput.gpu_status(None).startswith("skipped: no CUDA device")
    assert train_throughput.gpu_status({"gpu": "H100"}) == "the row with variant 'GPU (cuda)' (H100)"


def test_train_bench_gpu_row_runs_on_a_device_given():
    """The GPU column's body, on the CPU with a tiny batch: both public steps, the same-math check, a row."""
    import train_throughput

    args = type("Args", (), dict(batch=1, seq=8, steps=1, repeats=1))()
    syncs = []
    row = train_throughput._device_row(args, train_throughput.torch.device("cpu"), lambda: syncs.append(1))
    assert row["variant"] == "GPU (cuda)" and row["anatomy tokens/s"] > 0 and row["transformers tokens/s"] > 0
    assert abs(row["first loss anatomy"] - row["first loss transformers"]) <= 1e-5 * row["first loss anatomy"]
    assert len(syncs) == 3  # after the warm-up, and after each library's timed repeat
