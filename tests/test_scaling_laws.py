"""Tests for anatomy.experiments.scaling_laws: power laws in parameters and the Chinchilla arithmetic."""

import numpy as np
import pytest

from anatomy import cost
from anatomy.experiments import scaling_laws as S


def test_fit_power_law_recovers_exact_parameters():
    n = np.array([1e3, 1e4, 1e5, 1e6])
    loss = (8.8e13 / n) ** 0.076
    fit = S.fit_power_law(n, loss)
    assert fit.alpha == pytest.approx(0.076, abs=1e-12)
    assert fit.n_c == pytest.approx(8.8e13, rel=1e-8)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.decades == pytest.approx(3.0)
    np.testing.assert_allclose(fit(n), loss)
    assert fit.alpha_se < 1e-10  # exact points: no uncertainty in the slope
    noisy = loss * np.exp(np.array([0.01, -0.01, 0.01, -0.01]))
    x = np.log(n)
    slope, intercept = np.polyfit(x, np.log(noisy), 1)
    sse = ((np.log(noisy) - slope * x - intercept) ** 2).sum()
    assert S.fit_power_law(n, noisy).alpha_se == pytest.approx(np.sqrt(sse / 2 / ((x - x.mean()) ** 2).sum()))


def test_fit_power_law_errors():
    with pytest.raises(ValueError, match="two distinct"):
        S.fit_power_law([10, 10], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        S.fit_power_law([10, 100], [1.0, 0.0])


def test_fit_power_law_floor_recovers_a_floor_and_beats_the_pure_law():
    n = np.array([1e3, 4e3, 1.6e4, 6.4e4, 2.56e5])
    loss = 1.7 + 20.0 * n**-0.4
    fit = S.fit_power_law_floor(n, loss, grid=20000)
    assert fit.floor == pytest.approx(1.7, abs=2e-3)
    assert fit.alpha == pytest.approx(0.4, abs=0.01)
    assert fit.max_residual < 1e-3
    np.testing.assert_allclose(fit(n), loss, atol=1e-3)
    # the same points miss a pure power law by much more: the floor flattens them
    pure = S.fit_power_law(n, loss)
    assert np.abs(pure(n) - loss).max() > 10 * fit.max_residual


def test_fit_power_law_floor_fails_on_points_that_bend_the_wrong_way():
    # losses that fall faster and faster with log N (concave in log-log): no E + A N^-alpha fits them well
    n = np.array([1e3, 1e4, 1e5, 1e6])
    loss = np.array([3.0, 2.95, 2.8, 2.3])
    assert S.fit_power_law_floor(n, loss).max_residual > 0.05
    # and a loss that rises with N gets a negative exponent
    assert S.fit_power_law_floor(n, loss[::-1]).alpha < 0


def test_fit_power_law_floor_errors():
    with pytest.raises(ValueError, match="three distinct"):
        S.fit_power_law_floor([10, 100, 100], [2.0, 1.5, 1.4])
    with pytest.raises(ValueError, match="finite"):
        S.fit_power_law_floor([10, 100, 1000], [2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        S.fit_power_law_floor([10, 100, 1000], [2.0, 1.0])
    with pytest.raises(TypeError, match="grid"):
        S.fit_power_law_floor([10, 100, 1000], [2.0, 1.5, 1.4], grid=1.5)


def test_compute_optimal_minimizes_the_parametric_loss():
    flops = 5.76e23
    n_opt, d_opt = S.compute_optimal(flops)
    assert cost.training_flops(n_opt, d_opt) == pytest.approx(flops)
    best = S.chinchilla_loss(n_opt, d_opt)
    for factor in (0.5, 0.8, 1.25, 2.0):  # any other split of the same compute is worse
        n = n_opt * factor
        assert S.chinchilla_loss(n, flops / (6 * n)) > best
    a, b = S.chinchilla_exponents()
    assert a + b == pytest.approx(1.0)
    assert a == pytest.approx(0.28 / 0.62)
    # doubling compute multiplies N_opt by 2^a
    assert S.compute_optimal(2 * flops)[0] / n_opt == pytest.approx(2**a)


def test_rule_of_thumb_reproduces_chinchilla():
    n, d = S.rule_of_thumb(cost.training_flops(70e9, 1.4e12))
    assert n == pytest.approx(70e9)
    assert d == pytest.approx(1.4e12)


def test_chinchilla_argument_errors():
    with pytest.raises(ValueError, match="missing"):
        S.chinchilla_loss(1e9, 1e10, constants={"E": 1.0})
    with pytest.raises(ValueError, match="flops"):
        S.compute_optimal(-1.0)
    with pytest.raises(ValueError, match="> 0"):
        S.chinchilla_loss(0, 1e10)
