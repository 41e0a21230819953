"""Information-theoretic measurements: entropy, cross-entropy, KL, bits, and exact likelihoods.

Everything here is exact where it can be: the functions that take an enumerated joint distribution (an
array of shape ``(V,) * n`` holding the probability of every sequence of length n) compute conditional
entropies, chain-rule terms in any order, pseudo-log-likelihoods and span likelihoods with no sampling.
The functions that take a :class:`anatomy.data.MarkovSource` give the exact next-token distribution at
every position of given sequences, so a model's KL to the truth is measured token by token.

Units: natural logarithms (nats) throughout; :func:`nats_to_bits` and :func:`bits_per_char` convert.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from anatomy._checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_tensor,
    is_int,
    is_number,
)

__all__ = [
    "LN2",
    "NGramModel",
    "bits_per_char",
    "chain_rule_terms",
    "conditional_entropy",
    "conditional_inconsistency",
    "cross_entropy",
    "entropy",
    "gibbs_sweep",
    "gibbs_sweep_matrix",
    "kl_divergence",
    "kl_to_source",
    "markov_conditionals",
    "masked_conditionals",
    "masked_lm_conditionals",
    "nats_to_bits",
    "pseudo_log_likelihood",
    "score_on_source",
    "span_log_likelihood",
    "stationary_distribution",
    "token_losses",
    "total_variation",
]


LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------


def nats_to_bits(nats: float | np.ndarray | torch.Tensor):
    """Convert nats to bits (divide by ln 2). Works on floats, arrays and tensors."""
    if not (is_number(nats) or isinstance(nats, (np.ndarray, torch.Tensor))):
        raise TypeError(f"nats must be a number, an array or a tensor, got {type(nats).__name__}")
    return nats / LN2


def bits_per_char(nats_per_token: float, n_tokens: int, n_chars: int) -> float:
    """Bits per character of a text of `n_chars` characters scored at `nats_per_token` over `n_tokens` tokens.

    The total code length (n_tokens * nats_per_token) is the same whatever the tokenizer; dividing it by
    the characters makes losses of models with different tokenizers comparable.
    """
    for name, value in (("n_tokens", n_tokens), ("n_chars", n_chars)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    check_float("nats_per_token", nats_per_token, lo=0)
    return float(nats_per_token) * int(n_tokens) / int(n_chars) / LN2


# ---------------------------------------------------------------------------------------------
# Entropy, cross-entropy, KL of distributions
# ---------------------------------------------------------------------------------------------


def _as_array(x, name: str) -> np.ndarray:
    """``x`` as a float64 array; a value that is not numbers (a string, None) is a TypeError naming it."""
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}") from e


def _as_dist(p, name: str, axis: int = -1, atol: float = 1e-6) -> np.ndarray:
    check_int("axis", axis)
    p = _as_array(p, name)
    if p.ndim == 0:
        raise ValueError(f"{name} must be an array of probabilities, got a scalar")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold finite probabilities >= 0")
    total = p.sum(axis=axis)
    if not np.allclose(total, 1.0, atol=atol):
        raise ValueError(
            f"{name} must sum to 1 along axis {axis} (got sums in [{total.min():.6g}, {total.max():.6g}])"
        )
    return p


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log(y) with 0 * log(anything) = 0 and x * log(0) = -inf for x > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = x * np.log(y)
    return np.where(x > 0, out, 0.0)


def entropy(p, axis: int = -1) -> np.ndarray | float:
    """H(p) = -sum p log p in nats along `axis` (0 log 0 = 0). p: probabilities summing to 1 on `axis`."""
    p = _as_dist(p, "p", axis)
    out = -_xlogy(p, p).sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def cross_entropy(p, q, axis: int = -1) -> np.ndarray | float:
    """H(p, q) = -sum p log q in nats along `axis`: the expected code length of p's outcomes under q.

    Infinite where q gives probability 0 to an outcome that p gives probability > 0.
    """
    p, q = _as_dist(p, "p", axis), _as_dist(q, "q", axis)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    out = -_xlogy(p, q).sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def kl_divergence(p, q, axis: int = -1) -> np.ndarray | float:
    """KL(p || q) = sum p log(p / q) in nats along `axis`; >= 0, zero only when q = p where p > 0.

    Computed term by term (not as H(p, q) - H(p)), so it keeps full precision when it is small.
    """
    p, q = _as_dist(p, "p", axis), _as_dist(q, "q", axis)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    out = terms.sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


# ---------------------------------------------------------------------------------------------
# Enumerated joint distributions: chain rule, pseudo-likelihood, span likelihood
# ---------------------------------------------------------------------------------------------


def _as_joint(joint, name: str = "joint") -> np.ndarray:
    joint = _as_array(joint, name)
    if joint.ndim < 1:
        raise ValueError(f"{name} must have one axis per position, shape (V,) * n")
    if not np.isfinite(joint).all() or (joint < 0).any():
        raise ValueError(f"{name} must hold finite probabilities >= 0")
    if not math.isclose(joint.sum(), 1.0, abs_tol=1e-9):
        raise ValueError(f"{name} must sum to 1, got {joint.sum():.12g}")
    return joint


def _check_positions(positions: Sequence[int], n: int, name: str) -> tuple[int, ...]:
    try:
        positions = tuple(positions)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {positions!r}") from None
    if not all(is_int(i) for i in positions):
        raise TypeError(f"{name} must be a sequence of ints, got {positions!r}")
    positions = tuple(int(i) for i in positions)
    if len(set(positions)) != len(positions):
        raise ValueError(f"{name} must not repeat a position, got {positions}")
    bad = [i for i in positions if not 0 <= i < n]
    if bad:
        raise ValueError(f"{name} must be positions in [0, {n}), got {bad}")
    return positions


def conditional_entropy(joint, target: int, given: Sequence[int] = ()) -> float:
    """H(X_target | X_given) in nats, computed from an enumerated joint of shape (V,) * n.

    Computed directly as E[-log p(x_target | x_given)] from the conditional distributions (the marginal
    over target + given, divided by the marginal over given), not as a difference of two joint entropies.
    """
    joint = _as_joint(joint)
    n = joint.ndim
    (target,) = _check_positions([target], n, "target")
    given = _check_positions(given, n, "given")
    if target in given:
        raise ValueError(f"target {target} is also in given {given}")
    keep = tuple(sorted((*given, target)))
    pair = joint.sum(axis=tuple(i for i in range(n) if i not in keep))  # axes in sorted `keep` order
    context = pair.sum(axis=keep.index(target), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(context > 0, pair / context, 0.0)
    return float(-_xlogy(pair, cond).sum())


def chain_rule_terms(joint, order: Sequence[int] | None = None) -> np.ndarray:
    """The chain-rule terms H(X_{o1}), H(X_{o2} | X_{o1}), ..., for the variable order `order`.

    joint: an enumerated joint of shape (V,) * n. order: a permutation of range(n) (default: left to right).
    Returns the n conditional entropies (nats); their sum is the joint entropy for every order.
    """
    joint = _as_joint(joint)
    n = joint.ndim
    order = tuple(range(n)) if order is None else _check_positions(order, n, "order")
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {order}")
    return np.array([conditional_entropy(joint, order[i], order[:i]) for i in range(n)])


def pseudo_log_likelihood(joint) -> np.ndarray:
    """PLL(x) = sum_i log p(x_i | x_-i) for every sequence x: the score a masked LM gives a whole text.

    joint: enumerated joint, shape (V,) * n. Returns an array of the same shape (nats; -inf where p(x) = 0).
    Each conditional p(x_i | all other positions) is exact: p(x) / sum_v p(x with x_i = v), i.e. what a
    perfect masked LM predicts for one masked position. exp(PLL) is not a distribution over sequences:
    its sum over all sequences is in general not 1.
    """
    joint = _as_joint(joint)
    pll = np.zeros_like(joint)
    for i in range(joint.ndim):
        with np.errstate(divide="ignore", invalid="ignore"):
            pll += np.log(joint) - np.log(joint.sum(axis=i, keepdims=True))
    return pll


def span_log_likelihood(joint, span: Sequence[int]) -> np.ndarray:
    """log p(x_span | x_rest) for every sequence, as the chain rule over the span left to right.

    This is what an encoder-decoder trained with span corruption scores: the decoder predicts the span's
    tokens one by one, each given the visible text (the encoder's input) and the span tokens before it.
    Returns an array of shape (V,) * n (nats). For every visible context, exp of it sums to 1 over the
    span's contents: a proper conditional distribution.
    """
    joint = _as_joint(joint)
    n = joint.ndim
    span = _check_positions(span, n, "span")
    if not span:
        raise ValueError("span must name at least one position")
    if len(span) == n:
        raise ValueError("span must leave at least one position visible")
    out = np.zeros_like(joint)
    for k, j in enumerate(span):
        later = span[k + 1 :]
        up_to_j = joint.sum(axis=later, keepdims=True) if later else joint  # p(rest, span[:k+1])
        before_j = up_to_j.sum(axis=j, keepdims=True)  # p(rest, span[:k])
        with np.errstate(divide="ignore", invalid="ignore"):
            out = out + (np.log(up_to_j) - np.log(before_j))  # broadcast over the later span axes
    return out


# ---------------------------------------------------------------------------------------------
# Masked-LM conditionals and Gibbs sampling, exactly (the whole space of short sequences)
# ---------------------------------------------------------------------------------------------


def total_variation(p, q) -> float:
    """TV(p, q) = 1/2 sum |p - q| over all outcomes (any shape, the same for both): in [0, 1]. For
    distributions given as dicts outcome -> probability: :func:`anatomy.speculative.dict_total_variation`."""
    p, q = _as_array(p, "p"), _as_array(q, "q")
    for name, x in (("p", p), ("q", q)):
        if not np.isfinite(x).all() or (x < 0).any():
            raise ValueError(f"{name} must hold finite probabilities >= 0")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    return float(0.5 * np.abs(p - q).sum())


def _as_conditionals(conditionals) -> np.ndarray:
    c = _as_array(conditionals, "conditionals")
    n = c.ndim - 1
    if n < 1 or c.shape[0] != n or len(set(c.shape[1:])) != 1:
        raise ValueError(f"conditionals must have shape (n,) + (V,) * n, got {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("conditionals must hold finite probabilities >= 0")
    for i in range(n):
        if not np.allclose(c[i].sum(axis=i), 1.0, atol=1e-6):
            raise ValueError(f"conditionals[{i}] must sum to 1 over position {i}")
    return c


def masked_conditionals(joint) -> np.ndarray:
    """The exact conditionals p(x_i | x_-i) of an enumerated joint: what a perfect masked LM predicts.

    joint: shape (V,) * n. Returns shape (n,) + (V,) * n: ``out[i][x]`` = p(x_i | all other positions of x),
    which sums to 1 over axis i of ``out[i]``. (pseudo_log_likelihood is the sum over i of their logs.)
    """
    joint = _as_joint(joint)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = [np.where(joint > 0, joint / joint.sum(axis=i, keepdims=True), 0.0) for i in range(joint.ndim)]
    return np.stack(out)


@torch.no_grad()
def masked_lm_conditionals(
    model, vocab_size: int, length: int, mask_id: int, batch_size: int = 8192
) -> np.ndarray:
    """A masked LM's conditionals q(x_i | x_-i) for every sequence of `length` symbols, one masked at a time.

    model(ids) -> logits (B, length, >= vocab_size); ids are symbols 0..vocab_size-1 plus `mask_id`.
    Only the logits of the vocab_size symbols are used (the mask symbol is never a prediction).
    Returns float64 of shape (length,) + (vocab_size,) * length, in the layout of :func:`masked_conditionals`.
    """
    if not callable(model):
        raise TypeError(f"model must be callable (ids -> logits), got {type(model).__name__}")
    for name, value, low in (
        ("vocab_size", vocab_size, 2),
        ("length", length, 1),
        ("mask_id", mask_id, 0),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must not be one of the {vocab_size} symbols, got {mask_id}")
    if vocab_size**length > 2**20:
        raise ValueError(f"vocab_size**length = {vocab_size**length} sequences is too many (max 2**20)")
    V, n = int(vocab_size), int(length)
    seqs = torch.from_numpy(np.indices((V,) * n).reshape(n, -1).T.copy())  # (V^n, n), row-major order
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    out = np.empty((n,) + (V,) * n)
    try:
        for i in range(n):
            masked = seqs.clone()
            masked[:, i] = mask_id
            probs = []
            for start in range(0, len(seqs), batch_size):
                logits = model(masked[start : start + batch_size])[:, i, :V]
                probs.append(torch.softmax(logits.double(), dim=-1))
            q = torch.cat(probs)  # (V^n, V): q(. | x_-i), the same for the V sequences that differ at i
            out[i] = q.gather(1, seqs[:, i : i + 1]).reshape((V,) * n).numpy()
    finally:
        if was_training:
            model.train()
    return out


def gibbs_sweep(dist, conditionals, order: Sequence[int] | None = None) -> np.ndarray:
    """The distribution after one systematic-scan Gibbs sweep, exactly (no sampling).

    dist: a distribution over sequences, shape (V,) * n (where the chain is now). conditionals: shape
    (n,) + (V,) * n as from :func:`masked_conditionals`. One sweep resamples position order[0], then
    order[1], ..., each from its conditional given the others: for position i the new distribution is
    (dist summed over x_i) * conditionals[i]. Exact conditionals of a positive joint p leave p unchanged.
    """
    c = _as_conditionals(conditionals)
    n = c.shape[0]
    d = _as_array(dist, "dist")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("dist must hold finite probabilities >= 0")
    if d.shape != c.shape[1:]:
        raise ValueError(f"dist must have shape {c.shape[1:]}, got {d.shape}")
    order = tuple(range(n)) if order is None else _check_positions(order, n, "order")
    for i in order:
        d = d.sum(axis=i, keepdims=True) * c[i]
    return d


def gibbs_sweep_matrix(conditionals, order: Sequence[int] | None = None) -> np.ndarray:
    """The transition matrix of one systematic Gibbs sweep, (V^n, V^n), rows: from, columns: to.

    Sequences are numbered in row-major order of the (V,) * n layout. At most 4,096 sequences.
    """
    c = _as_conditionals(conditionals)
    n, V = c.shape[0], c.shape[1]
    S = V**n
    if S > 4096:
        raise ValueError(f"V**n = {S} sequences is too many for a dense transition matrix (max 4096)")
    order = tuple(range(n)) if order is None else _check_positions(order, n, "order")
    T = np.eye(S)
    for i in order:  # one site update, applied to every row of T (each row is a distribution over sequences)
        T = _site_update_rows(T, c, i)
    return T


def _site_update_rows(rows: np.ndarray, conditionals: np.ndarray, i: int) -> np.ndarray:
    """Apply the site-i Gibbs update to each row of `rows` (m, V^n), a distribution over sequences each."""
    n, V = conditionals.shape[0], conditionals.shape[1]
    d = rows.reshape((len(rows),) + (V,) * n)
    d = d.sum(axis=1 + i, keepdims=True) * conditionals[i][None]
    return d.reshape(len(rows), -1)


def stationary_distribution(T) -> np.ndarray:
    """The stationary distribution pi = pi T of an irreducible row-stochastic matrix, by a linear solve."""
    T = _as_array(T, "T")
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square matrix, got shape {T.shape}")
    if (T < 0).any() or not np.allclose(T.sum(1), 1.0, atol=1e-9):
        raise ValueError("T must be row-stochastic (entries >= 0, rows summing to 1)")
    A = T.T - np.eye(len(T))
    A[-1] = 1.0  # replace one (redundant) balance equation by sum(pi) = 1
    b = np.zeros(len(T))
    b[-1] = 1.0
    pi = np.linalg.solve(A, b)
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def conditional_inconsistency(conditionals, dist) -> float:
    """How far `conditionals` are from being the conditionals of `dist`, in nats.

    The mean over positions i of E_{x ~ dist}[KL(dist(. | x_-i) || conditionals[i](. | x_-i))]. Zero
    exactly when every conditional of dist (where dist > 0) is the given one, which for the stationary
    distribution of a Gibbs chain happens if and only if the conditionals are those of one joint.
    """
    c = _as_conditionals(conditionals)
    d = _as_joint(dist, "dist")
    if d.shape != c.shape[1:]:
        raise ValueError(f"dist must have shape {c.shape[1:]}, got {d.shape}")
    own = masked_conditionals(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(d > 0, d * (np.log(own) - np.log(c)), 0.0)
    return float(terms.sum() / c.shape[0])


# ---------------------------------------------------------------------------------------------
# Exact next-token distributions of a Markov source, and a model's KL to them
# ---------------------------------------------------------------------------------------------


def markov_conditionals(source, seqs) -> torch.Tensor:
    """The true next-token distribution after each prefix of each sequence, exactly.

    source: an :class:`anatomy.data.MarkovSource` (order K, V symbols). seqs: (n, L) token ids.
    Returns float64 (n, L, V): row t is p(x_{t+1} = . | x_0..x_t), the distribution a perfect decoder
    predicts at position t. For t + 1 < K it uses only the t + 1 symbols seen (the stationary marginals),
    which is why early positions have a higher floor.
    """
    from anatomy.data import MarkovSource

    check_instance("source", source, MarkovSource, "an anatomy MarkovSource")
    seqs = source._check_seqs(seqs)
    n, L = seqs.shape
    V, K = source.vocab_size, source.order
    out = torch.empty(n, L, V, dtype=torch.float64)
    for t in range(min(L, K - 1)):  # seen t + 1 < K symbols
        window = torch.from_numpy(np.ascontiguousarray(source.marginal(t + 2))).reshape(-1, V)  # (V^(t+1), V)
        window = window / window.sum(-1, keepdim=True).clamp_min(1e-300)
        powers = V ** torch.arange(t, -1, -1)
        out[:, t] = window[(seqs[:, : t + 1] * powers).sum(-1)]
    if L >= K:
        T = torch.from_numpy(source._T)  # (V^K, V)
        contexts = source._contexts(seqs)  # (n, L - K + 1): context ending at position K-1, K, ...
        out[:, K - 1 :] = T[contexts]
    return out


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log q(target) per position, in nats. logits (..., V), targets (...) -> (...) float64."""
    check_tensor("logits", logits, kind="float")
    check_tensor("targets", targets, kind="int")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[-1]):
        raise ValueError(
            f"targets must be ids in [0, {logits.shape[-1]}), got {int(targets.min())}..{int(targets.max())}"
        )
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} + (vocab,)")
    logq = torch.log_softmax(logits.detach().double(), dim=-1)
    return -logq.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def kl_to_source(logits: torch.Tensor, true_probs: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position in nats, where q = softmax(logits) and p = true_probs, both (..., V).

    With p from :func:`markov_conditionals`, this is the model's exact excess loss at each position: the
    expected cross-entropy there minus the best achievable one, with no sampling noise from the target.
    """
    check_tensor("logits", logits, kind="float")
    check_tensor("true_probs", true_probs, kind="float")
    if not torch.isfinite(true_probs).all() or (true_probs < 0).any():
        raise ValueError("true_probs must hold finite probabilities >= 0")
    if logits.shape != true_probs.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and true_probs {tuple(true_probs.shape)} must match")
    logq = torch.log_softmax(logits.detach().double(), dim=-1)
    p = true_probs.double()
    logp = torch.log(p.clamp_min(1e-300))
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


# ---------------------------------------------------------------------------------------------
# Count-based n-gram models (the simplest model with a context length k)
# ---------------------------------------------------------------------------------------------


class NGramModel:
    """A count-based next-token model with a context of exactly `k` previous tokens, add-`alpha` smoothing.

    q(x | c) = (count(c, x) + alpha) / (count(c) + alpha * V). With k = 0 it is the unigram model. Counts come
    from `fit` on sequences of token ids; :meth:`losses` scores the positions that have k tokens before them.
    Its loss on held-out data can never go below H(X_t | k previous tokens): the KL floor of context k.
    """

    def __init__(self, vocab_size: int, k: int, alpha: float = 0.1, reverse: bool = False):
        if not is_int(vocab_size) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        if not is_int(k) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        if vocab_size ** (k + 1) > 20_000_000:
            raise ValueError(f"vocab_size**(k + 1) = {vocab_size ** (k + 1)} counts is too many (max 2e7)")
        if not is_number(alpha) or not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        check_bool("reverse", reverse)
        self.vocab_size, self.k, self.alpha, self.reverse = vocab_size, k, float(alpha), bool(reverse)
        self.counts = np.zeros((vocab_size**k, vocab_size))

    def __repr__(self) -> str:
        direction = ", reverse=True" if self.reverse else ""
        return f"NGramModel(vocab_size={self.vocab_size}, k={self.k}, alpha={self.alpha}{direction})"

    def _windows(self, seqs) -> tuple[np.ndarray, np.ndarray]:
        seqs = np.asarray(seqs.numpy() if isinstance(seqs, torch.Tensor) else seqs)
        if seqs.ndim == 1:
            seqs = seqs[None]
        if seqs.ndim != 2 or not np.issubdtype(seqs.dtype, np.integer):
            raise ValueError(f"seqs must be integer ids of shape (n, length), got {seqs.dtype} {seqs.shape}")
        if seqs.size and (seqs.min() < 0 or seqs.max() >= self.vocab_size):
            raise ValueError(f"seqs must hold ids in [0, {self.vocab_size})")
        if seqs.shape[1] <= self.k:
            raise ValueError(f"seqs must be longer than k={self.k}, got length {seqs.shape[1]}")
        if self.reverse:  # predict each token from the k tokens after it
            seqs = seqs[:, ::-1]
        k, V = self.k, self.vocab_size
        context = np.zeros((seqs.shape[0], seqs.shape[1] - k), dtype=np.int64)
        for j in range(k):
            context = context * V + seqs[:, j : seqs.shape[1] - k + j]
        return context.ravel(), seqs[:, k:].ravel()

    def fit(self, seqs) -> NGramModel:
        """Add the (context, next token) counts of `seqs` (n, length) or (length,). Returns self."""
        context, target = self._windows(seqs)
        flat = np.bincount(context * self.vocab_size + target, minlength=self.counts.size)
        self.counts += flat.reshape(self.counts.shape)
        return self

    def probs(self) -> np.ndarray:
        """The smoothed table q(x | context), shape (V**k, V)."""
        c = self.counts + self.alpha
        return c / c.sum(-1, keepdims=True)

    def losses(self, seqs, start: int | None = None) -> np.ndarray:
        """-log q(x_t | its k-token context), shape (n, scored positions), in nats.

        Scores positions t >= k of each sequence (counted in reading order), or t >= `start` if given, so
        that models with different k can be compared on the same tokens.
        """
        context, target = self._windows(seqs)
        n = 1 if np.ndim(seqs) == 1 else len(seqs)
        out = -np.log(self.probs()[context, target]).reshape(n, -1)
        if start is not None:
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < self.k:
                raise ValueError(f"start must be an int >= k={self.k}, got {start!r}")
            if start >= self.k + out.shape[1]:
                raise ValueError(f"start={start} leaves no position to score")
            out = out[:, start - self.k :]
        return out

    def loss(self, seqs, start: int | None = None) -> float:
        """Mean of :meth:`losses`: the cross-entropy on `seqs`, in nats per token."""
        return float(self.losses(seqs, start).mean())


# ---------------------------------------------------------------------------------------------
# A decoder scored against a Markov source
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def score_on_source(model, source, seqs) -> dict[str, torch.Tensor]:
    """Score a next-token model on sequences of a Markov source, position by position, exactly.

    model(x) -> logits (n, L - 1, V) for x = seqs[:, :-1]; position i predicts seqs[:, i + 1] from i + 1
    tokens of context. Returns float64 tensors of shape (n, L - 1):
    ``loss`` (-log q of the actual next token), ``kl`` (KL(p || q) to the true next-token distribution)
    and ``bayes`` (-log p of the actual next token: the loss of a perfect model on the same tokens).
    Means over many positions: loss ~ bayes + kl, and bayes ~ the entropy rate where the context is full.
    """
    from anatomy.data import MarkovSource

    if not callable(model):
        raise TypeError(f"model must be callable (ids -> logits), got {type(model).__name__}")
    check_instance("source", source, MarkovSource, "an anatomy MarkovSource")
    seqs = source._check_seqs(seqs)
    if seqs.shape[1] < 2:
        raise ValueError(f"seqs must have length >= 2, got {seqs.shape[1]}")
    x, y = seqs[:, :-1], seqs[:, 1:]
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        logits = model(x)
    finally:
        if was_training:
            model.train()
    p = markov_conditionals(source, x)
    bayes = -torch.log(p.gather(-1, y.unsqueeze(-1)).squeeze(-1))
    return {"loss": token_losses(logits, y), "kl": kl_to_source(logits, p), "bayes": bayes}
