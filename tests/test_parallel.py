"""anatomy.experiments.parallel: forked runs give the loop's results, in the loop's order."""

import gc

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
    # a result never collected: dropping the object shuts its process pool down
    pending = parallel.start(lambda: 1)
    pool = pending._pool
    assert pool is not None and not pool._shutdown_thread
    del pending
    gc.collect()
    assert pool._shutdown_thread


def _seeded_draw(seed: int) -> float:
    torch.manual_seed(seed)  # as every training job does
    return torch.randn(2).sum().item()


@pytest.mark.parametrize("n_workers", ["1", "2"])
def test_the_callers_random_state_does_not_depend_on_the_worker_count(monkeypatch, n_workers):
    """With one worker the jobs ran in the caller and left torch's random state where the last job's seed
    put it; forked jobs leave it alone: what the caller drew next depended on the number of cores."""
    import random

    import numpy as np

    monkeypatch.setenv("ANATOMY_WORKERS", n_workers)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    got = parallel.run_all([lambda s=s: _seeded_draw(s) for s in (1, 2)])
    assert got == [_seeded_draw(1), _seeded_draw(2)]
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    pending = parallel.start(lambda: (torch.rand(3), _seeded_draw(3)))
    torch.rand(5)  # the caller's own work between start() and result()
    first, draw = pending.result()
    assert draw == _seeded_draw(3)
    torch.manual_seed(0)
    assert torch.equal(first, torch.rand(3))  # the job started from the state at start()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    parallel.run_all([lambda s=s: (_seeded_draw(s), np.random.seed(s), random.seed(s)) for s in (1, 2)])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
