"""Tests for anatomy.train: the training loop, its schedules, budgets and determinism."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anatomy.data import MarkovSource
from anatomy.train import History, evaluate, learning_rate, next_token_loss, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds contention (3x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Bigram(nn.Module):
    """The smallest language model: the next token's logits from the current token only."""

    def __init__(self, vocab_size: int, d: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, x):  # (B, N) -> (B, N, V)
        return self.head(self.embed(x))


def make_model(seed: int = 0, vocab_size: int = 8) -> Bigram:
    torch.manual_seed(seed)
    return Bigram(vocab_size)


SOURCE = MarkovSource(8, order=1, alpha=0.3, seed=0)


def test_bigram_learns_the_markov_source():
    model = make_model()
    history = train(model, SOURCE.token_batches(16, 32, seed=0), steps=400, lr=3e-2, progress=False)
    assert len(history.step) == 400 and history.step[-1] == 400
    assert history.tokens[-1] == 400 * 16 * 32
    # on held-out samples the model's loss approaches the exact Bayes loss from above
    held_out = SOURCE.sample(256, 129, torch.Generator().manual_seed(123))
    x, y = held_out[:, :-1], held_out[:, 1:]
    model_loss = evaluate(model, [(x, y)], 1)
    bayes = SOURCE.bayes_next_token_loss(held_out).mean().item()
    assert 0.0 < model_loss - bayes < 0.02
    assert abs(bayes - SOURCE.entropy_rate()) < 0.02
    assert history.final_loss == pytest.approx(SOURCE.entropy_rate(), abs=0.05)
    assert history.loss[0] > SOURCE.entropy_rate() + 0.5  # it did have to learn


def test_training_is_deterministic():
    runs = []
    for _ in range(2):
        model = make_model(seed=1)
        history = train(model, SOURCE.token_batches(8, 16, seed=2), steps=30, progress=False, seed=5)
        runs.append((history, [p.detach().clone() for p in model.parameters()]))
    (h1, p1), (h2, p2) = runs
    assert h1.loss == h2.loss and h1.lr == h2.lr and h1.tokens == h2.tokens
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    h3 = train(make_model(seed=2), SOURCE.token_batches(8, 16, seed=2), steps=30, progress=False, seed=5)
    assert h3.loss != h1.loss


def test_steps_budget_and_lr_history():
    history = train(make_model(), SOURCE.token_batches(4, 16), steps=50, warmup=5, progress=False)
    assert history.step == list(range(1, 51))
    assert history.lr == [learning_rate(i, 50, lr=3e-3, warmup=5) for i in range(50)]
    assert history.tokens == [64 * s for s in history.step]
    assert history.seconds == sorted(history.seconds)


def test_tokens_budget():
    history = train(make_model(), SOURCE.token_batches(4, 16), tokens=1000, progress=False)
    n_steps = math.ceil(1000 / 64)  # 16 steps of 64 targets
    assert len(history.step) == n_steps
    assert history.tokens[-1] >= 1000 > history.tokens[-2]
    assert history.lr == [learning_rate(i, n_steps) for i in range(n_steps)]


def test_seconds_budget():
    history = train(make_model(), SOURCE.token_batches(4, 16), seconds=0.3, progress=False)
    assert history.seconds[-1] >= 0.3
    assert len(history.step) == 1 or history.seconds[-2] < 0.3
    if len(history.lr) >= 3:  # a loaded machine may fit fewer steps: no assertion on speed
        assert history.lr[-1] < max(history.lr)  # the schedule decayed towards the end


def test_learning_rate_schedules():
    lr = lambda step, schedule: learning_rate(
        step, 100, lr=1.0, warmup=10, schedule=schedule, min_lr_ratio=0.1
    )
    for schedule in ("cosine", "wsd", "constant"):
        assert [lr(s, schedule) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr(10, "cosine") == 1.0
    assert lr(10 + 89 / 2, "cosine") == pytest.approx(0.55)  # half way down the cosine
    assert lr(99, "cosine") == pytest.approx(0.1)
    cosine = [lr(s, "cosine") for s in range(10, 100)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    assert [lr(s, "wsd") for s in range(10, 80)] == [1.0] * 70  # stable
    assert lr(80, "wsd") == pytest.approx(1.0 - 0.9 / 20)  # then linear decay over the last 20 steps
    assert lr(89, "wsd") == pytest.approx(0.55)
    assert lr(99, "wsd") == pytest.approx(0.1)
    assert [lr(s, "constant") for s in range(10, 100)] == [1.0] * 90
    assert learning_rate(0, 100, lr=1.0, warmup=0.05) == pytest.approx(0.2)  # a fraction: 5 steps
    assert learning_rate(0, 100, lr=1.0, warmup=0) == 1.0
    assert learning_rate(150, 100, lr=1.0, warmup=0, min_lr_ratio=0.0) == 0.0  # past the end: the floor
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, 10, schedule="linear")


def test_schedule_through_train():
    history = train(
        make_model(), SOURCE.token_batches(2, 8), steps=20, warmup=0, schedule="wsd", progress=False
    )
    assert history.lr[:16] == [3e-3] * 16 and history.lr[-1] == pytest.approx(3e-4)


def test_custom_loss_fn_and_dict_batches():
    def half_loss(model, batch):  # a loss on every other position only: half the targets
        logits = model(batch["input_ids"])[:, ::2]
        targets = batch["labels"][:, ::2]
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), targets.numel()

    def batches(step):
        x, y = SOURCE.token_batches(4, 16)(step)
        return {"input_ids": x, "labels": y}

    history = train(make_model(), batches, tokens=320, loss_fn=half_loss, progress=False)
    assert history.tokens == [32, 64, 96, 128, 160, 192, 224, 256, 288, 320]
    # a loss_fn that returns a scalar: targets are counted from batch["labels"] (-100 ignored)
    scalar = lambda model, batch: half_loss(model, batch)[0]
    history = train(make_model(), batches, steps=3, loss_fn=scalar, progress=False)
    assert history.tokens == [64, 128, 192]


def test_ignore_index_is_not_counted():
    x, y = SOURCE.token_batches(4, 16)(0)
    y = y.clone()
    y[:, :6] = -100
    loss, n = next_token_loss(make_model(), (x, y))
    assert n == 40 and torch.isfinite(loss)
    history = train(make_model(), [(x, y)] * 3, steps=3, progress=False)
    assert history.tokens == [40, 80, 120]


def test_iterable_batches_that_run_out():
    batches = [SOURCE.token_batches(2, 8)(i) for i in range(5)]
    with pytest.warns(UserWarning, match="ran out after 5 steps"):
        history = train(make_model(), batches, steps=10, progress=False)
    assert len(history.step) == 5


def test_eval_fn_and_evaluate():
    val = SOURCE.token_batches(8, 32, seed=99)
    model = make_model()
    history = train(
        model,
        SOURCE.token_batches(8, 32),
        steps=25,
        lr=3e-2,
        eval_fn=lambda m: {"val": evaluate(m, val, 2), "training": float(m.training)},
        eval_every=10,
        progress=False,
    )
    assert [s for s, _ in history.evals] == [0, 10, 20, 25]
    assert all(e["training"] == 0.0 for _, e in history.evals)  # evaluated in eval mode
    assert history.evals[-1][1]["val"] < history.evals[0][1]["val"]
    assert model.training
    only_end = train(
        make_model(), SOURCE.token_batches(8, 32), steps=5, eval_fn=lambda m: 1.5, progress=False
    )
    assert only_end.evals == [(5, {"loss": 1.5})]
    no_start = train(
        make_model(),
        SOURCE.token_batches(8, 32),
        steps=25,
        eval_fn=lambda m: 1.5,
        eval_every=10,
        eval_at_start=False,
        progress=False,
    )
    assert [s for s, _ in no_start.evals] == [10, 20, 25]
    # evaluate = the target-weighted mean of the default loss; it restores the previous mode
    model.eval()
    batches = [val(i) for i in range(3)]
    manual = sum(next_token_loss(model, b)[0].item() for b in batches) / 3
    assert evaluate(model, val, 3) == pytest.approx(manual, rel=1e-6)
    assert not model.training


def test_weight_decay_only_on_matrices():
    class WithSpares(Bigram):
        def __init__(self):
            super().__init__(8)
            self.spare_matrix = nn.Parameter(torch.ones(3, 3))
            self.spare_vector = nn.Parameter(torch.ones(3))

        def forward(self, x):  # the spares get zero gradients: only weight decay can move them
            return super().forward(x) + 0 * (self.spare_matrix.sum() + self.spare_vector.sum())

    torch.manual_seed(0)
    model = WithSpares()
    train(
        model,
        SOURCE.token_batches(2, 8),
        steps=10,
        lr=0.1,
        weight_decay=0.5,
        warmup=0,
        schedule="constant",
        progress=False,
    )
    assert torch.allclose(model.spare_matrix, torch.full((3, 3), (1 - 0.1 * 0.5) ** 10))
    assert torch.equal(model.spare_vector, torch.ones(3))


def test_progress_bar_goes_to_stdout(capsys, monkeypatch):
    monkeypatch.delenv("ANATOMY_PROGRESS", raising=False)
    train(make_model(), SOURCE.token_batches(2, 8), steps=5, progress=True)
    out, err = capsys.readouterr()
    assert "5/5" in out and "loss=" in out and err == ""
    monkeypatch.setenv("ANATOMY_PROGRESS", "0")
    train(make_model(), SOURCE.token_batches(2, 8), steps=5, progress=True)
    assert capsys.readouterr() == ("", "")


def test_history_final_loss_and_to_dict():
    h = History(step=list(range(1, 41)), loss=[float(i) for i in range(40)])
    assert h.final_loss == pytest.approx((38 + 39) / 2)  # the last 5% = 2 steps
    assert History(loss=[3.0]).final_loss == 3.0
    assert math.isnan(History().final_loss)
    d = h.to_dict()
    assert d["final_loss"] == h.final_loss and d["loss"] == h.loss and d["evals"] == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one budget"),
        ({"steps": 10, "tokens": 100}, "exactly one budget"),
        ({"steps": 10, "seconds": 1.0}, "exactly one budget"),
        ({"steps": 0}, "steps"),
        ({"tokens": -5}, "tokens"),
        ({"seconds": 0.0}, "seconds"),
        ({"steps": 10, "schedule": "linear"}, "schedule"),
        ({"steps": 10, "warmup": 1.5}, "warmup"),
        ({"steps": 10, "warmup": -1}, "warmup"),
        ({"steps": 10, "lr": 0.0}, "lr"),
        ({"steps": 10, "weight_decay": -0.1}, "weight_decay"),
        ({"steps": 10, "min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"steps": 10, "grad_clip": 0.0}, "grad_clip"),
        ({"steps": 10, "eval_every": 0}, "eval_every"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(make_model(), SOURCE.token_batches(2, 8), progress=False, **kwargs)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="steps"):
        train(make_model(), SOURCE.token_batches(2, 8), steps=10.0, progress=False)
    with pytest.raises(TypeError, match="batches"):
        train(make_model(), 42, steps=1, progress=False)
    with pytest.raises(TypeError, match="tokens budget"):
        train(
            make_model(),
            lambda step: {"x": 1},
            tokens=10,
            progress=False,
            loss_fn=lambda m, b: m.head.bias.sum(),
        )


def _tiny_lm():
    from anatomy import Config, Transformer

    torch.manual_seed(0)
    return Transformer(Config(vocab_size=10, d_model=16, n_layers=1, n_heads=2))


def test_divergence_stops_training_naming_the_step():
    # lr=1e12 used to finish with NaN parameters and no error or warning.
    x = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = (x[:, :-1], x[:, 1:])
    with pytest.raises(FloatingPointError, match=r"step 2\b"):  # step 1 is finite, its update is not
        train(_tiny_lm(), lambda s: batch, steps=4, lr=1e12, warmup=0, grad_clip=None, progress=False)

    def nan_gradient_loss(model, batch):  # a finite loss whose gradient is NaN (0 * sqrt'(0) = 0 * inf)
        loss, n = next_token_loss(model, batch)
        return loss + (model.embed_tokens.weight[0, 0] * 0).sqrt(), n

    with pytest.raises(FloatingPointError, match=r"step 1\b.*the last"):  # no loss after the last update
        train(_tiny_lm(), lambda s: batch, steps=1, loss_fn=nan_gradient_loss, grad_clip=None, progress=False)
    for lr in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="lr"):
            train(_tiny_lm(), lambda s: batch, steps=1, lr=lr, progress=False)
    history = train(_tiny_lm(), lambda s: batch, steps=3, lr=1e-3, progress=False)
    assert all(math.isfinite(v) for v in history.loss)


def test_evaluate_without_targets_and_negative_steps_are_value_errors():
    x = torch.randint(0, 10, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batches"):  # was a ZeroDivisionError
        evaluate(_tiny_lm(), lambda i: (x, torch.full_like(x, -100)), 2)
    with pytest.raises(ValueError, match="step"):  # was a ZeroDivisionError
        learning_rate(-5, 10)
