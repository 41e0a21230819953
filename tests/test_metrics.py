"""Tests for anatomy.metrics: entropies, chain rule, pseudo-likelihood, span likelihood, KL to a source."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anatomy import metrics as M
from anatomy.data import MarkovSource

pytestmark = pytest.mark.usefixtures("one_thread")


def random_joint(V: int, n: int, seed: int, alpha: float = 0.5) -> np.ndarray:
    """An arbitrary (not Markov) joint over n positions."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(V**n, alpha)).reshape((V,) * n)


# ---- entropy, cross-entropy, KL ---------------------------------------------------------------


def test_entropy_known_values():
    assert M.entropy([0.5, 0.5]) == pytest.approx(math.log(2))
    assert M.entropy([1.0, 0.0, 0.0]) == 0.0  # 0 log 0 = 0
    assert M.entropy(np.full(8, 1 / 8)) == pytest.approx(math.log(8))
    rows = np.array([[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(M.entropy(rows), [math.log(2), 0.0])


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.integers(0, 10_000))
def test_cross_entropy_is_entropy_plus_kl(V, seed):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(V)), rng.dirichlet(np.ones(V))
    assert M.cross_entropy(p, q) == pytest.approx(M.entropy(p) + M.kl_divergence(p, q), abs=1e-12)
    assert M.kl_divergence(p, q) >= 0
    assert M.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    assert M.cross_entropy(p, q) >= M.entropy(p) - 1e-12  # Gibbs' inequality


def test_kl_is_infinite_when_q_misses_support():
    assert M.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert M.cross_entropy([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert M.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_bad_distributions_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        M.entropy([0.5, 0.6])
    with pytest.raises(ValueError, match=">= 0"):
        M.entropy([1.5, -0.5])
    with pytest.raises(ValueError, match="same shape"):
        M.kl_divergence([0.5, 0.5], [1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="scalar"):
        M.entropy(1.0)


def test_units():
    assert M.nats_to_bits(math.log(2)) == pytest.approx(1.0)
    # 100 tokens at 2 nats each over 400 characters: 200 nats / 400 chars = 0.5 nats/char
    assert M.bits_per_char(2.0, 100, 400) == pytest.approx(0.5 / math.log(2))
    with pytest.raises(ValueError, match="n_chars"):
        M.bits_per_char(2.0, 100, 0)
    with pytest.raises(ValueError, match="nats_per_token"):
        M.bits_per_char(float("nan"), 100, 10)


# ---- chain rule on enumerated joints ------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 4), st.integers(2, 4), st.integers(0, 10_000), st.data())
def test_chain_rule_holds_in_every_order_for_any_joint(V, n, seed, data):
    joint = random_joint(V, n, seed)
    H = M.entropy(joint.ravel())
    order = data.draw(st.permutations(list(range(n))))
    terms = M.chain_rule_terms(joint, order)
    assert terms.sum() == pytest.approx(H, abs=1e-10)
    assert (terms >= -1e-12).all()


def test_chain_rule_matches_markov_source_and_its_reversal():
    source = MarkovSource(4, 2, alpha=0.5, seed=3)
    joint = source.joint(5)
    H = source.joint_entropy(5)
    assert M.chain_rule_terms(joint).sum() == pytest.approx(H, abs=1e-10)
    left = M.chain_rule_terms(joint)
    # the first terms are H(X), H(X2|X1); from then on every term is the entropy rate (order 2)
    assert left[0] == pytest.approx(M.entropy(source.marginal(1)), abs=1e-12)
    np.testing.assert_allclose(left[2:], source.entropy_rate(), atol=1e-12)
    right = M.chain_rule_terms(joint, order=range(4, -1, -1))
    assert right.sum() == pytest.approx(H, abs=1e-10)
    np.testing.assert_allclose(right[2:], source.reversed().entropy_rate(), atol=1e-12)


def test_conditional_entropy_brute_force():
    joint = random_joint(3, 3, seed=1)
    # H(X2 | X0) by an explicit loop over outcomes
    pair = joint.sum(axis=1)  # (x0, x2)
    expected = 0.0
    for a, c in itertools.product(range(3), repeat=2):
        if pair[a, c] > 0:
            expected -= pair[a, c] * math.log(pair[a, c] / pair[a].sum())
    assert M.conditional_entropy(joint, 2, [0]) == pytest.approx(expected, abs=1e-12)
    assert M.conditional_entropy(joint, 1) == pytest.approx(M.entropy(joint.sum(axis=(0, 2))), abs=1e-12)


def test_chain_rule_argument_errors():
    joint = random_joint(2, 3, seed=0)
    with pytest.raises(ValueError, match="permutation"):
        M.chain_rule_terms(joint, order=[0, 1])
    with pytest.raises(ValueError, match="repeat"):
        M.chain_rule_terms(joint, order=[0, 0, 1])
    with pytest.raises(ValueError, match="positions in"):
        M.conditional_entropy(joint, 3)
    with pytest.raises(ValueError, match="also in given"):
        M.conditional_entropy(joint, 1, [1])
    with pytest.raises(ValueError, match="sum to 1"):
        M.chain_rule_terms(joint * 2)


# ---- pseudo-likelihood and span likelihood ------------------------------------------------------


def test_pseudo_log_likelihood_brute_force_and_not_normalized():
    joint = random_joint(3, 3, seed=5)
    pll = M.pseudo_log_likelihood(joint)
    for x in itertools.product(range(3), repeat=3):
        expected = 0.0
        for i in range(3):
            column = [joint[x[:i] + (v,) + x[i + 1 :]] for v in range(3)]
            expected += math.log(joint[x] / sum(column))
        assert pll[x] == pytest.approx(expected, abs=1e-12)
    assert abs(np.exp(pll).sum() - 1.0) > 0.01  # not a distribution over sequences


def test_pseudo_likelihood_of_independent_positions_is_the_likelihood():
    # if the positions are independent, p(x_i | x_-i) = p(x_i) and PLL = log p(x): the one case it works
    rng = np.random.default_rng(0)
    marginals = [rng.dirichlet(np.ones(4)) for _ in range(3)]
    joint = np.einsum("a,b,c->abc", *marginals)
    np.testing.assert_allclose(M.pseudo_log_likelihood(joint), np.log(joint), atol=1e-12)


def test_pll_overstates_the_likelihood_of_a_markov_source():
    source = MarkovSource(4, 1, alpha=0.3, seed=2)
    joint = source.joint(5)
    pll = M.pseudo_log_likelihood(joint)
    # A real distribution q would give E_p[-log q] >= H(p). The PLL "code length" is shorter than H.
    assert -(joint * pll).sum() < source.joint_entropy(5)
    assert np.exp(pll).sum() > 1.5


@pytest.mark.parametrize("span", [[1], [1, 2], [0, 3], [3, 1]])
def test_span_likelihood_is_a_normalized_conditional(span):
    joint = random_joint(3, 4, seed=7)
    log_span = M.span_log_likelihood(joint, span)
    sums = np.exp(log_span).sum(axis=tuple(sorted(span)))
    np.testing.assert_allclose(sums, 1.0, atol=1e-12)
    # and p(rest) * p(span | rest) = p(x): it is the chain rule
    rest = joint.sum(axis=tuple(sorted(span)), keepdims=True)
    np.testing.assert_allclose(rest * np.exp(log_span), joint, atol=1e-14)


def test_span_likelihood_argument_errors():
    joint = random_joint(2, 3, seed=0)
    with pytest.raises(ValueError, match="at least one"):
        M.span_log_likelihood(joint, [])
    with pytest.raises(ValueError, match="visible"):
        M.span_log_likelihood(joint, [0, 1, 2])


# ---- Markov conditionals, KL to the source -------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
def test_markov_conditionals_match_the_enumerated_joint(order):
    source = MarkovSource(3, order, alpha=0.5, seed=order)
    L = 5
    joint = source.joint(L + 1)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=L)))
    P = M.markov_conditionals(source, seqs)  # (n, L, V)
    assert P.shape == (3**L, L, 3)
    np.testing.assert_allclose(P.sum(-1).numpy(), 1.0, atol=1e-12)
    for row, x in enumerate(seqs.tolist()):
        for t in range(L):
            prefix = joint.sum(axis=tuple(range(t + 2, L + 1)))[tuple(x[: t + 1])]  # p(x_0..x_t, .)
            np.testing.assert_allclose(P[row, t].numpy(), prefix / prefix.sum(), atol=1e-12)


class TableModel(torch.nn.Module):
    """A 'decoder' that returns fixed log-probabilities: log P of an order-1 source plus noise."""

    def __init__(self, source, noise=0.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        table = torch.log(torch.from_numpy(source._T)).float()
        self.table = table + noise * torch.randn(table.shape, generator=g)

    def forward(self, x):
        return self.table[x]


def test_score_on_source_perfect_model_has_zero_kl():
    source = MarkovSource(5, 1, alpha=0.4, seed=1)
    seqs = source.sample(200, 20, torch.Generator().manual_seed(0))
    scores = M.score_on_source(TableModel(source), source, seqs)
    assert scores["kl"].abs().max() < 1e-5
    torch.testing.assert_close(scores["loss"], scores["bayes"], atol=1e-5, rtol=0)
    assert scores["bayes"].mean().item() == pytest.approx(source.entropy_rate(), abs=0.05)


def test_score_on_source_kl_equals_expected_excess_loss():
    source = MarkovSource(5, 1, alpha=0.4, seed=1)
    model = TableModel(source, noise=0.5)
    seqs = source.sample(4000, 12, torch.Generator().manual_seed(1))
    s = M.score_on_source(model, source, seqs)
    assert (s["kl"] > 0).all()
    # E[loss - bayes] = E[KL]; the sample mean agrees within its noise
    diff = (s["loss"] - s["bayes"]).flatten()
    se = diff.std().item() / math.sqrt(diff.numel())
    assert abs(diff.mean().item() - s["kl"].mean().item()) < 4 * se


def test_kl_to_source_shape_errors():
    with pytest.raises(ValueError, match="must match"):
        M.kl_to_source(torch.zeros(2, 3), torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="targets"):
        M.token_losses(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


# ---- n-gram count models --------------------------------------------------------------------------


def test_ngram_counts_and_losses_by_hand():
    model = M.NGramModel(3, 1, alpha=1.0).fit([0, 1, 0, 1, 2])
    # pairs: (0,1), (1,0), (0,1), (1,2)
    np.testing.assert_array_equal(model.counts, [[0, 2, 0], [1, 0, 1], [0, 0, 0]])
    q = model.probs()
    np.testing.assert_allclose(q[0], [1 / 5, 3 / 5, 1 / 5])
    np.testing.assert_allclose(q[2], [1 / 3] * 3)
    assert model.loss([[0, 1]]) == pytest.approx(-math.log(3 / 5))


def test_ngram_start_scores_the_same_positions():
    source = MarkovSource(3, 1, alpha=0.5, seed=0)
    seqs = source.sample(20, 10, torch.Generator().manual_seed(0))
    models = [M.NGramModel(3, k).fit(seqs) for k in (0, 1, 3)]
    shapes = [m.losses(seqs, start=3).shape for m in models]
    assert shapes == [(20, 7)] * 3
    np.testing.assert_allclose(models[0].losses(seqs)[:, 3:], models[0].losses(seqs, start=3))
    with pytest.raises(ValueError, match="start"):
        models[2].losses(seqs, start=2)
    with pytest.raises(ValueError, match="no position"):
        models[0].losses(seqs, start=10)


def test_ngram_reverse_reads_right_to_left():
    fwd = M.NGramModel(3, 1, alpha=1.0).fit([[0, 1, 2]])
    rev = M.NGramModel(3, 1, alpha=1.0, reverse=True).fit([[2, 1, 0]])
    np.testing.assert_array_equal(fwd.counts, rev.counts)


def test_ngram_test_loss_approaches_the_floor_of_its_context():
    source = MarkovSource(4, 2, alpha=0.3, seed=0)
    train = source.sample(1000, 200, torch.Generator().manual_seed(0))
    test = source.sample(50, 400, torch.Generator().manual_seed(1))
    for k in (0, 1, 2):
        floor = source.conditional_entropy(k)
        loss = M.NGramModel(4, k, alpha=0.1).fit(train).loss(test)
        assert abs(loss - floor) < 0.03, (k, loss, floor)
    assert source.conditional_entropy(0) > source.conditional_entropy(1) > source.conditional_entropy(2)


def test_ngram_argument_errors():
    with pytest.raises(ValueError, match="k must be"):
        M.NGramModel(4, -1)
    with pytest.raises(ValueError, match="alpha"):
        M.NGramModel(4, 1, alpha=0)
    with pytest.raises(ValueError, match="longer than k"):
        M.NGramModel(4, 3).fit([[0, 1, 2]])
    with pytest.raises(ValueError, match="ids in"):
        M.NGramModel(4, 1).fit([[0, 5]])
