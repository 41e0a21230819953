"""Tests for the masked-LM conditionals and exact Gibbs sampling in anatomy.metrics."""

import numpy as np
import pytest
import torch

from anatomy import metrics as M
from anatomy.data import MarkovSource


def random_joint(V: int, n: int, seed: int, alpha: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(V**n, alpha)).reshape((V,) * n)


def perturbed(cond: np.ndarray, seed: int, scale: float = 0.5) -> np.ndarray:
    """Conditionals with independent noise on each position's logits: in general no joint has them."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(cond)
    for i in range(cond.shape[0]):
        logits = np.log(cond[i]) + scale * rng.standard_normal(cond[i].shape)
        out[i] = np.exp(logits) / np.exp(logits).sum(axis=i, keepdims=True)
    return out


def test_masked_conditionals_normalise_and_give_the_pll():
    joint = random_joint(3, 4, 0)
    cond = M.masked_conditionals(joint)
    assert cond.shape == (4, 3, 3, 3, 3)
    for i in range(4):
        np.testing.assert_allclose(cond[i].sum(axis=i), 1.0)
    np.testing.assert_allclose(np.log(cond).sum(0), M.pseudo_log_likelihood(joint))


def test_exact_conditionals_leave_p_invariant_and_gibbs_converges_to_it():
    joint = MarkovSource(4, 2, alpha=0.5, seed=3).joint(3)
    cond = M.masked_conditionals(joint)
    np.testing.assert_allclose(M.gibbs_sweep(joint, cond), joint, atol=1e-15)
    d = np.zeros_like(joint)
    d[0, 0, 0] = 1.0  # one chain, started at one sequence
    for _ in range(200):
        d = M.gibbs_sweep(d, cond, order=[2, 0, 1])
    assert M.total_variation(d, joint) < 1e-9


def test_sweep_matrix_agrees_with_the_sweep_and_has_p_as_its_stationary_distribution():
    joint = random_joint(3, 3, 1)
    cond = M.masked_conditionals(joint)
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        T = M.gibbs_sweep_matrix(cond, order)
        np.testing.assert_allclose(T.sum(1), 1.0)
        start = random_joint(3, 3, 2)
        np.testing.assert_allclose(start.ravel() @ T, M.gibbs_sweep(start, cond, order).ravel(), atol=1e-15)
        np.testing.assert_allclose(M.stationary_distribution(T), joint.ravel(), atol=1e-12)
    assert abs(M.conditional_inconsistency(cond, joint)) < 1e-12


def test_inconsistent_conditionals_give_an_order_dependent_stationary_distribution():
    joint = random_joint(3, 3, 4)
    cond = perturbed(M.masked_conditionals(joint), seed=5)
    left = M.stationary_distribution(M.gibbs_sweep_matrix(cond, [0, 1, 2]))
    right = M.stationary_distribution(M.gibbs_sweep_matrix(cond, [2, 1, 0]))
    assert M.total_variation(left, right) > 1e-3
    assert M.total_variation(left, joint.ravel()) > 1e-3
    # the stationary distribution is stationary, but its conditionals are not the ones that built the chain
    pi = left.reshape(joint.shape)
    np.testing.assert_allclose(M.gibbs_sweep(pi, cond), pi, atol=1e-12)
    assert M.conditional_inconsistency(cond, pi) > 1e-3
    # against the true joint, the same function measures how far the conditionals are from p's (> 0)
    assert M.conditional_inconsistency(cond, joint) > 1e-3


def test_independent_positions_are_consistent_in_any_order():
    p = np.array([0.2, 0.5, 0.3])
    joint = np.einsum("i,j,k->ijk", p, p, p)
    cond = M.masked_conditionals(joint)
    for order in ([0, 1, 2], [1, 0, 2]):
        pi = M.stationary_distribution(M.gibbs_sweep_matrix(cond, order))
        np.testing.assert_allclose(pi, joint.ravel(), atol=1e-12)


class _TableMLM(torch.nn.Module):
    """A 'masked LM' that returns given conditionals: logits at the masked position = log p(. | rest)."""

    def __init__(self, cond: np.ndarray, mask_id: int):
        super().__init__()
        self.cond, self.mask_id = torch.from_numpy(cond), mask_id

    def forward(self, ids):
        n, V = self.cond.shape[0], self.cond.shape[1]
        out = torch.zeros(ids.shape[0], n, V + 1, dtype=torch.float64)
        for row, seq in enumerate(ids.tolist()):
            i = seq.index(self.mask_id)
            index = [slice(None) if j == i else seq[j] for j in range(n)]
            out[row, i, :V] = torch.log(self.cond[i][tuple(index)])
            out[row, i, V] = 50.0  # a large logit on the mask symbol: must be ignored
        return out


def test_masked_lm_conditionals_reads_the_model_one_masked_position_at_a_time():
    joint = random_joint(3, 3, 6)
    cond = M.masked_conditionals(joint)
    got = M.masked_lm_conditionals(_TableMLM(cond, 3), vocab_size=3, length=3, mask_id=3, batch_size=5)
    np.testing.assert_allclose(got, cond, atol=1e-12)


def test_argument_errors():
    cond = M.masked_conditionals(random_joint(2, 3, 0))
    with pytest.raises(ValueError, match="mask_id"):
        M.masked_lm_conditionals(_TableMLM(cond, 1), vocab_size=2, length=3, mask_id=1)
    with pytest.raises(TypeError, match="length"):
        M.masked_lm_conditionals(_TableMLM(cond, 2), vocab_size=2, length=3.0, mask_id=2)
    with pytest.raises(ValueError, match="too many"):
        M.masked_lm_conditionals(_TableMLM(cond, 9), vocab_size=8, length=7, mask_id=9)
    with pytest.raises(ValueError, match="shape"):
        M.gibbs_sweep(np.ones((2, 2)) / 4, cond)
    with pytest.raises(ValueError, match="order"):
        M.gibbs_sweep(np.ones((2, 2, 2)) / 8, cond, order=[0, 0, 1])
    with pytest.raises(ValueError, match="conditionals"):
        M.gibbs_sweep(np.ones((2, 2, 2)) / 8, cond[:2])
    with pytest.raises(ValueError, match="too many"):
        M.gibbs_sweep_matrix(M.masked_conditionals(random_joint(4, 7, 0)))
    with pytest.raises(ValueError, match="row-stochastic"):
        M.stationary_distribution(np.ones((3, 3)))
    with pytest.raises(ValueError, match="same shape"):
        M.total_variation(np.ones(3) / 3, np.ones(4) / 4)
