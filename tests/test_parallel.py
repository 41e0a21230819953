"""anatomy.experiments.parallel: forked runs give the loop's results, in the loop's order."""

import pytest
import torch

from anatomy.experiments import parallel


def _train(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 8)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model.weight.detach().clone()


def test_run_all_equals_the_loop_in_order(monkeypatch):
    jobs = [lambda s=s: _train(s) for s in (3, 1, 2)]  # closures: fine, the children are forked
    loop = [job() for job in jobs]
    monkeypatch.setenv("ANATOMY_WORKERS", "2")
    for costs in (None, [1, 3, 2]):
        got = parallel.run_all(jobs, costs=costs)
        assert all(torch.equal(a, b) for a, b in zip(got, loop))
    monkeypatch.setenv("ANATOMY_WORKERS", "1")
    assert parallel.workers(3) == 1
    assert all(torch.equal(a, b) for a, b in zip(parallel.run_all(jobs), loop))
    with pytest.raises(ValueError, match="costs"):
        parallel.run_all(jobs, costs=[1])


def test_start_returns_the_result(monkeypatch):
    monkeypatch.setenv("ANATOMY_WORKERS", "2")
    pending = parallel.start(lambda: _train(5))
    assert torch.equal(pending.result(), _train(5))
