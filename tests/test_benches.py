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


@pytest.fixture(scope="module")
def tiny_pair():
    """A tiny random Llama-style decoder as transformers and as anatomy (the same weights), with prompts: what
    benches/generate.py times, small enough for a test. Weights spread wider than the init, so greedy tokens
    are decided by clear margins (the same on both sides, as the bench requires)."""
    import torch
    import transformers

    import anatomy

    g = torch.Generator().manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for w in hf.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * (0.2 if w.dim() > 1 else 0.5))
    hf.generation_config.eos_token_id = None  # exactly n_new tokens, as the bench sets it
    hf.generation_config.pad_token_id = 0
    ids = torch.randint(1, 97, (1, 20), generator=g)
    long_ids = torch.randint(1, 97, (1, 40), generator=g)
    return anatomy.from_hf(hf), hf, ids, long_ids


def test_generate_bench_cpu_rows_time_the_shared_variants(tiny_pair, capsys):
    """The CPU rows' table over generate._variants (the helper the GPU column uses too), on a tiny model."""
    import generate

    model, hf, ids, long_ids = tiny_pair
    variants = generate._variants(model, hf, ids, long_ids, 4)
    assert list(variants) == ["anatomy", "transformers"]
    args = type("Args", (), dict(repeats=1, clock="wall", prefill=long_ids.shape[1]))()
    row = generate._table(args, 1, 4, ids, variants)
    assert row["same tokens"] is True and row["prefill max diff"] < 1e-4
    assert row["anatomy tokens/s"] > 0 and row["transformers prefill ms"] > 0 and row["generation ratio"] > 0
    assert "same 4 greedy tokens: yes" in capsys.readouterr().out


def test_generate_bench_gpu_row_runs_on_a_device_given(tiny_pair):
    """The GPU column's body (generate._device_row), on the CPU: copies moved to the device, the shared
    variants with a synchronize after every call, and the row the GPU column adds its name to."""
    import generate

    model, hf, ids, long_ids = tiny_pair
    args = type("Args", (), dict(repeats=2))()
    syncs = []
    row = generate._device_row(
        args, model, hf, ids, long_ids, 4, generate.torch.device("cpu"), lambda: syncs.append(1)
    )
    assert row["same tokens"] is True and row["anatomy tokens/s"] > 0 and row["prefill ratio"] > 0
    assert len(syncs) == 4 + 4 * args.repeats  # warm-up (2 generations, 2 prefills), then 4 calls per repeat


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
