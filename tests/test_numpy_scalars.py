"""NumPy scalars are valid numbers (anatomy._checks: is_int/is_number accept them, bools excepted): the
argument checks written as isinstance(x, int) or isinstance(x, (int, float)) refused np.int64(20) or
np.float32(0.1) with a ValueError that called a valid value invalid. Each call here was refused before."""

import numpy as np
import pytest
import torch

from anatomy import Config, Transformer, metrics
from anatomy import speculative as sp
from anatomy.experiments import capacity, experts, positions, scaling_laws
from anatomy.model import RopeTable

CALLS = {
    "scaling_laws.compute_optimal": lambda: scaling_laws.compute_optimal(np.float32(1e21)),
    "scaling_laws.rule_of_thumb": lambda: scaling_laws.rule_of_thumb(np.float32(1e21), np.int64(20)),
    "capacity.teacher_source": lambda: capacity.teacher_source(5, 2, scale=np.float32(3.0)),
    "metrics.NGramModel": lambda: metrics.NGramModel(np.int64(5), np.int64(2), alpha=np.float32(0.1)),
    "positions.ridge_r2": lambda: positions.ridge_r2(
        torch.randn(12, 4, 3), torch.randn(12, 4), np.int64(8), ridge=np.float32(1e-3)
    ),
    "experts.deepseek_v3_params": lambda: experts.deepseek_v3_params({"n_layers": np.int64(61)}),
    "model.RopeTable": lambda: RopeTable(np.int64(16), 10000.0),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_numpy_scalars_are_accepted(name):
    CALLS[name]()


def test_numpy_scalars_compute_what_python_numbers_do():
    assert scaling_laws.compute_optimal(np.float64(1e21)) == scaling_laws.compute_optimal(1e21)
    assert scaling_laws.rule_of_thumb(1e21, np.int64(20)) == scaling_laws.rule_of_thumb(1e21, 20)
    params = experts.deepseek_v3_params
    assert params({"n_layers": np.int64(61)}) == params({"n_layers": 61})


def test_speculative_generate_takes_numpy_ints():
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=17, d_model=16, n_heads=2, n_layers=1, max_seq_len=64))
    ids = torch.tensor([[1, 2, 3, 1, 2]])
    a = sp.speculative_generate(
        model, sp.NgramDrafter(17), ids, np.int64(6), gamma=np.int64(2), adaptive=True, max_gamma=np.int64(8)
    )
    b = sp.speculative_generate(model, sp.NgramDrafter(17), ids, 6, gamma=2, adaptive=True, max_gamma=8)
    assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize(
    "call",
    [
        lambda: scaling_laws.compute_optimal(True),
        lambda: metrics.NGramModel(True, 2),
        lambda: sp.expected_speedup(0.5, True, 0.1),
    ],
)
def test_bools_are_still_refused(call):
    with pytest.raises((TypeError, ValueError)):
        call()


def test_numpy_bools_are_bools():
    """A flag computed by NumPy (np.bool_) was refused as 'must be a bool'; 1 and a tensor still are."""
    from anatomy._checks import check_bool

    assert check_bool("flag", np.array(3) > 2) is True and check_bool("flag", np.False_) is False
    for bad in (1, torch.tensor(True), None):
        with pytest.raises(TypeError, match="flag"):
            check_bool("flag", bad)
    assert Config(vocab_size=8, d_model=16, n_heads=2, n_layers=1, qkv_bias=np.True_).qkv_bias is True
