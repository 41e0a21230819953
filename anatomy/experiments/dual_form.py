"""In-context learning as gradient descent: the dual form of linear self-attention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anatomy._checks import check_float, check_int

__all__ = ["DualForm", "dual_form", "plot_dual_form"]


# ---------------------------------------------------------------------------------------------------------
# Dai et al.'s dual form: one gradient-descent step = one linear-attention layer over the examples
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DualForm:
    """Predictions for the queries from one GD step and from attention over the in-context examples."""

    gd: np.ndarray  # (n_query, d_out): W1 x after one GD step from W0
    linear_attention: np.ndarray  # the same, computed by a linear self-attention layer over the tokens
    softmax_attention: dict[float, np.ndarray]  # logit scale s -> the softmax layer's prediction
    max_abs_diff_linear: float  # |gd - linear_attention|, max over entries
    rel_err_linear: float  # ||linear_attention - gd|| / ||gd - W0 x||, comparable with rel_err_softmax
    rel_err_softmax: dict[float, float]  # s -> ||softmax - gd|| / ||gd - W0 x|| (the update's size)
    logit_std: dict[float, float]  # s -> standard deviation of the softmax's logits s * k_i . q
    rel_err_plain_softmax: float  # the linear layer with its identity swapped for a softmax, no rescaling


def _linear_self_attention(
    Z: np.ndarray, W_K, W_Q, W_V, n_context: int, scale: float, softmax: bool
) -> np.ndarray:
    """Z (n_tokens, d): context tokens first; returns each query token's residual update (n_query, d).

    Queries attend to the n_context example tokens only. Linear: update = scale * sum_i (k_i . q) v_i.
    Softmax: update = sum_i softmax_i(scale * k_i . q) v_i (the standard layer, minus 1/sqrt(d)).
    """
    K, V = Z[:n_context] @ W_K.T, Z[:n_context] @ W_V.T
    Q = Z[n_context:] @ W_Q.T
    logits = Q @ K.T  # (n_query, n_context)
    if softmax:
        w = np.exp(scale * logits - (scale * logits).max(1, keepdims=True))
        return (w / w.sum(1, keepdims=True)) @ V
    return scale * logits @ V


def dual_form(
    n_examples: int = 32,
    d_in: int = 8,
    d_out: int = 2,
    *,
    n_query: int = 16,
    lr: float = 0.5,
    w0_scale: float = 0.5,
    softmax_scales: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    seed: int = 0,
) -> DualForm:
    """Check numerically (float64) that in-context linear regression by one GD step is linear attention.

    Data: x ~ N(0, I/d_in) (centred over the examples), y = W* x with a random W*. One GD step on
    L(W) = 1/(2n) sum_i ||W x_i - y_i||^2 from W0 gives W1 = W0 + (lr/n) sum_i (y_i - W0 x_i) x_i^T.
    Tokens z_i = [x_i; y_i], query tokens [x; 0]. A linear attention layer with W_K = W_Q = [I 0; 0 0],
    W_V = [0 0; -W0 I] and scale lr/n adds (lr/n) sum_i (y_i - W0 x_i)(x_i . x) to the query's y slot;
    with the zero-shot term W0 x (Dai et al.'s W_ZSL q) that is W1 x exactly. Softmax attention with the
    same weights and logit scale s has weights (1 + s k_i.q + O(s^2)) / n over centred examples, so
    W0 x + (lr / s) (out - mean_i v_i) equals W1 x to first order in s: the match holds only as s -> 0.
    """
    for name, value in (("n_examples", n_examples), ("d_in", d_in), ("d_out", d_out), ("n_query", n_query)):
        check_int(name, value, lo=1)
    check_float("lr", lr)
    check_float("w0_scale", w0_scale)
    if isinstance(softmax_scales, (str, bytes)) or not softmax_scales:
        raise ValueError(f"softmax_scales must be a non-empty sequence of numbers > 0, got {softmax_scales}")
    for scale in softmax_scales:
        check_float("softmax_scales", scale, lo=0, lo_open=True)
    rng = np.random.default_rng(seed)
    W_star = rng.normal(size=(d_out, d_in))
    W0 = w0_scale * rng.normal(size=(d_out, d_in))
    X = rng.normal(size=(n_examples, d_in)) / math.sqrt(d_in)
    X -= X.mean(0)  # centred examples: the first-order expansion of softmax then has no bias term
    Y = X @ W_star.T
    Xq = rng.normal(size=(n_query, d_in)) / math.sqrt(d_in)

    grad = (X @ W0.T - Y).T @ X / n_examples  # dL/dW at W0, (d_out, d_in)
    W1 = W0 - lr * grad
    gd = Xq @ W1.T

    d = d_in + d_out
    Z = np.concatenate([np.concatenate([X, Y], 1), np.concatenate([Xq, np.zeros((n_query, d_out))], 1)])
    W_KQ = np.zeros((d, d))
    W_KQ[:d_in, :d_in] = np.eye(d_in)
    W_V = np.zeros((d, d))
    W_V[d_in:, :d_in] = -W0
    W_V[d_in:, d_in:] = np.eye(d_out)
    zero_shot = Xq @ W0.T  # the prediction without examples: W_ZSL q
    update = _linear_self_attention(Z, W_KQ, W_KQ, W_V, n_examples, lr / n_examples, softmax=False)
    lin = zero_shot + update[:, d_in:]

    values = Y - X @ W0.T  # v_i (their y slot)
    plain_out = _linear_self_attention(Z, W_KQ, W_KQ, W_V, n_examples, lr / n_examples, softmax=True)
    plain = zero_shot + plain_out[:, d_in:]  # the same layer with a softmax, nothing else changed
    logits = Xq @ X.T
    soft, rel, spread = {}, {}, {}
    for s in softmax_scales:
        spread[float(s)] = float((s * logits).std())
        out = _linear_self_attention(Z, W_KQ, W_KQ, W_V, n_examples, s, softmax=True)[:, d_in:]
        # softmax_i(s a) = (1 + s a_i + O(s^2)) / n (centred keys): out = mean(v) + (s/n) sum_i a_i v_i + ...
        pred = zero_shot + (lr / s) * (out - values.mean(0))
        soft[float(s)] = pred
        rel[float(s)] = float(np.linalg.norm(pred - gd) / np.linalg.norm(gd - zero_shot))
    update_norm = np.linalg.norm(gd - zero_shot)
    return DualForm(
        gd,
        lin,
        soft,
        float(np.abs(gd - lin).max()),
        float(np.linalg.norm(lin - gd) / update_norm),
        rel,
        spread,
        float(np.linalg.norm(plain - gd) / update_norm),
    )


def plot_dual_form(result: DualForm):
    """How far softmax attention is from one GD step, against the spread of its logits (log-log)."""
    import matplotlib.pyplot as plt

    scales = sorted(result.rel_err_softmax)
    spread = [result.logit_std[s] for s in scales]
    err = [result.rel_err_softmax[s] for s in scales]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.loglog(spread, err, "o-", color="#D55E00", label="softmax attention, rescaled to first order")
    ax.axhline(max(result.rel_err_linear, 1e-17), color="#0072B2", ls="--", lw=1, label="linear attention")
    ax.set_xlabel("spread of the attention logits (standard deviation)")
    ax.set_ylabel("relative distance from one GD step")
    ax.set_title("One GD step = linear attention; softmax only approximately")
    ax.legend(fontsize=9, loc="center right")
    fig.tight_layout()
    return fig
