"""Tests for anatomy.experiments.capacity: population-loss students and the scaling family."""

import math

import numpy as np
import pytest
import torch

from anatomy.data import MarkovSource
from anatomy.experiments import capacity as C

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- students ----------------------------------------------------------------------------------------


def test_parameter_counts_match_the_modules():
    students = C.MLPStudents(5, 2, [1, 3, 3, 7, 9], embed_dim=2)
    # the parameters that can move are exactly the counted ones (padding units never get a gradient)
    (students() ** 2).sum().backward()
    movable = sum(int((p.grad != 0).sum()) for p in students.parameters())
    assert movable == sum(students.num_params())
    assert students.num_params()[0] == C.student_params(5, 2, 1, 2) == 5 * 2 + (2 * 2 + 1) * 1 + (1 + 1) * 5
    assert C.table_params(8, 3) == 512 * 7


def test_students_are_independent_and_padding_is_inert():
    students = C.MLPStudents(4, 2, [2, 5, 2, 20], seed=0)
    logits = students()
    assert logits.shape == (4, 16, 4)
    # widths 2, 5, 2 share the padded group of width 8; width 20 has its own group of 32
    assert students.groups == [8, 32] and students.members == [[0, 1, 2], [3]]
    logits[0].sum().backward()  # student 0 only
    grads = dict(students.named_parameters())
    for name in ("embed.0", "w1.0", "b1.0", "w2.0", "b2.0"):
        g = grads[name].grad
        assert g[0].abs().sum() > 0
        assert g[1:].abs().sum() == 0  # the other students of the group are untouched
    assert grads["w1.1"].grad is None or grads["w1.1"].grad.abs().sum() == 0
    # student 0 has width 2: its padding units 2..7 receive no gradient, so they never change
    assert grads["w1.0"].grad[0, :, 2:].abs().sum() == 0
    assert grads["w2.0"].grad[0, 2:, :].abs().sum() == 0


def test_padding_does_not_change_the_function():
    # a student alone in its own group and the same student padded inside a group compute the same logits
    alone = C.MLPStudents(4, 2, [3], seed=0)
    padded = C.MLPStudents(4, 2, [3, 7], seed=0)
    with torch.no_grad():
        for name in ("embed", "w1", "b1", "w2", "b2"):
            getattr(padded, name)[0][0].zero_()
            target = getattr(padded, name)[0][0]
            source = getattr(alone, name)[0][0]
            target[tuple(slice(0, n) for n in source.shape)] = source
        torch.testing.assert_close(padded()[0], alone()[0])


def test_contexts_follow_markov_source_row_order():
    source = MarkovSource(3, 2, alpha=0.5, seed=0)
    ctx = C.all_contexts(3, 2)
    for row in (0, 4, 8):
        a, b = ctx[row].tolist()
        np.testing.assert_allclose(source._T[row], source.P[a, b])


def test_teacher_source_is_representable_by_a_student_of_its_width():
    source = C.teacher_source(4, 2, width=2, seed=1)
    assert source.order == 2 and source.vocab_size == 4
    fit = C.fit_population([source], [2], steps=600, lr=0.05, seed=0)
    assert fit.kl[0] < 0.02
    assert fit.loss[0] == pytest.approx(source.entropy_rate() + fit.kl[0])


def test_fit_population_capacity_ordering():
    random_table = MarkovSource(4, 2, alpha=0.3, seed=0)
    fit = C.fit_population([random_table], [1, 64], steps=500, lr=0.05, seed=0)
    small, large = fit.kl
    assert small > 0.2  # one tanh unit cannot represent 16 arbitrary rows
    assert large < 0.05  # 64 units can
    assert all(h[0] >= h[-1] for h in fit.history)
    assert fit.params == [C.student_params(4, 2, 1), C.student_params(4, 2, 64)]


def test_fit_population_held_out_contexts():
    random_table = MarkovSource(4, 2, alpha=0.3, seed=0)
    fit = C.fit_population([random_table], [64], steps=400, lr=0.05, seed=0, train_fraction=0.5)
    # the seen contexts are fitted; the unseen rows of an arbitrary table cannot be guessed
    assert fit.kl_seen[0] < 0.05
    assert fit.kl_unseen[0] > 0.3
    full = C.fit_population([random_table], [64], steps=50, seed=0)
    assert math.isnan(full.kl_unseen[0])


def test_fit_population_fraction_per_source():
    source = MarkovSource(4, 2, alpha=0.3, seed=0)
    fit = C.fit_population([source, source], [16], steps=100, seed=0, train_fraction=[1.0, 0.5])
    assert math.isnan(fit.kl_unseen[0]) and not math.isnan(fit.kl_unseen[1])
    assert fit.kl_seen[0] == pytest.approx(fit.kl[0])


def test_teacher_source_rate_matching():
    target = MarkovSource(4, 2, alpha=0.3, seed=1).entropy_rate()
    source = C.teacher_source(4, 2, width=3, seed=2, rate=target)
    assert source.entropy_rate() == pytest.approx(target, abs=1e-5)
    with pytest.raises(ValueError, match="out of reach"):
        C.teacher_source(4, 2, width=3, seed=2, rate=10.0)


def test_teacher_source_rate_matching_never_tries_degenerate_scales():
    # chapter 3's setting at ANATOMY_SEED=9: a fixed bracket up to scale 100 built a near-deterministic table
    # whose stationary distribution MarkovSource could not solve (RuntimeError); the bracket now grows from 1
    target = MarkovSource(8, 3, alpha=0.3, seed=9).entropy_rate()
    source = C.teacher_source(8, 3, width=3, seed=9, rate=target)
    assert source.entropy_rate() == pytest.approx(target, abs=1e-6)


def test_entropy_rate_by_power_iteration_matches_the_linear_solve():
    for seed in range(3):
        source = MarkovSource(5, 2, alpha=0.3, seed=seed)
        assert C._entropy_rate(source._T.reshape(25, 5)) == pytest.approx(source.entropy_rate(), abs=1e-12)


def test_fit_population_argument_errors():
    s = MarkovSource(3, 1, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        C.fit_population([], [1])
    with pytest.raises(ValueError, match="same vocab_size"):
        C.fit_population([s, MarkovSource(4, 1, seed=0)], [1])
    with pytest.raises(ValueError, match="train_fraction"):
        C.fit_population([s], [1], train_fraction=0.0)
    with pytest.raises(ValueError, match="train_fraction"):
        C.fit_population([s], [1], train_fraction=[0.5, 0.5])
    with pytest.raises(TypeError, match="widths"):
        C.MLPStudents(3, 1, "12")
    with pytest.raises(ValueError, match="width"):
        C.student_params(3, 1, 0)


# ---- the scaling family ------------------------------------------------------------------------------


def test_decoder_config_counts_like_kaplan():
    from anatomy.model import Transformer

    for d, L in ((16, 1), (32, 2), (48, 3)):
        model = Transformer(C.decoder_config(d, L, vocab_size=50, seq_len=16))
        n = model.num_params()
        # 12 L d^2 plus the norms' gains and the rounding of 8d/3
        assert abs(n - 12 * L * d * d) < 0.03 * 12 * L * d * d + (2 * L + 1) * d + 3 * L * d
    with pytest.raises(ValueError, match="multiple"):
        C.decoder_config(50, 1, 50, 16, head_dim=16)


def test_scaling_run_is_deterministic_and_records_checkpoints():
    g = torch.Generator().manual_seed(0)
    train_ids = torch.randint(0, 20, (5000,), generator=g)
    val_ids = torch.randint(0, 20, (1000,), generator=g)
    configs = [C.decoder_config(8, 1, 20, 16), C.decoder_config(16, 1, 20, 16)]
    a = C.scaling_run(
        configs,
        train_ids,
        val_ids,
        tokens=16 * 8 * 12,
        batch_size=8,
        seq_len=16,
        n_checkpoints=3,
        val_batches=2,
        seed=1,
    )
    b = C.scaling_run(
        configs,
        train_ids,
        val_ids,
        tokens=16 * 8 * 12,
        batch_size=8,
        seq_len=16,
        n_checkpoints=3,
        val_batches=2,
        seed=1,
    )
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
    assert [r["val_loss_se"] for r in a] == [r["val_loss_se"] for r in b]
    assert all(0 < r["val_loss_se"] < 0.5 for r in a)
    assert a[0]["tokens"] == [4 * 128, 8 * 128, 12 * 128]
    assert a[0]["params"] < a[1]["params"]
    # uniform random tokens: nothing to learn beyond log 20
    assert all(abs(v - math.log(20)) < 0.3 for r in a for v in r["val_loss"])


def test_width_scaled_lr():
    assert C.width_scaled_lr(32) == pytest.approx(0.01)
    assert C.width_scaled_lr(128) == pytest.approx(0.005)
    assert C.width_scaled_lr(2) == pytest.approx(0.02)  # capped
