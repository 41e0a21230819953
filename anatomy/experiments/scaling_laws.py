"""Scaling laws: the power laws of the capacity and compression chapter and the Chinchilla arithmetic.

* **Power laws in parameters** (:func:`fit_power_law`, :func:`fit_power_law_floor`): Kaplan et al.'s
  L = (N_c / N)^alpha, and the same law above an irreducible loss, fitted to measured losses.
* **Hoffmann et al.'s parametric loss** (:func:`chinchilla_loss`, :func:`compute_optimal`): E + A / N^alpha +
  B / D^beta and its compute-optimal allocation under C = 6 N D, against the "20 tokens per parameter"
  reading (:func:`rule_of_thumb`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anatomy._checks import check_int, is_number

__all__ = [
    "HOFFMANN2022",
    "KAPLAN2020_ALPHA_N",
    "FloorPowerLawFit",
    "PowerLawFit",
    "chinchilla_exponents",
    "chinchilla_loss",
    "compute_optimal",
    "fit_power_law",
    "fit_power_law_floor",
    "rule_of_thumb",
]


# Kaplan et al. (2020), eq. 1.1: L(N) = (N_c / N)^alpha_N for models trained to convergence on enough data,
# N = non-embedding parameters.
KAPLAN2020_ALPHA_N = 0.076

# Hoffmann et al. (2022), approach 3 (eq. 10 and appendix D.2): L(N, D) = E + A / N^alpha + B / D^beta, as
# printed in the paper (rounded). Besiroglu et al. (2024) show the rounding and an optimizer stopped early
# bias what these constants imply; the chapter prints the consequence.
HOFFMANN2022 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

# ---------------------------------------------------------------------------------------------
# Power laws and the Chinchilla arithmetic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """L(N) = (N_c / N)^alpha fitted by least squares on log L = alpha log N_c - alpha log N."""

    alpha: float  # the exponent (positive when the loss falls with N)
    n_c: float  # the scale N_c
    r2: float  # coefficient of determination of the log-log fit
    n_points: int
    decades: float  # log10(max N / min N): how much range the fit spans
    alpha_se: float = math.nan  # standard error of alpha from the regression (nan with 2 points)

    def __call__(self, n):
        """The fitted loss at N (float or array)."""
        return (self.n_c / np.asarray(n, dtype=np.float64)) ** self.alpha


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLawFit:
    """Fit Kaplan et al.'s form L = (N_c / N)^alpha to points (n_i, loss_i) in log-log space."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(np.asarray(n, dtype=np.float64))
        y = np.log(np.asarray(loss, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"n and loss must be 1-D of the same length, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("need at least two distinct n to fit a power law")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("n and loss must be finite and > 0")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    alpha = -float(slope)
    n_c = float(np.exp(intercept / alpha)) if alpha != 0 else math.inf
    # ordinary least squares: se(slope) = sqrt(SSE / (n - 2) / sum (x - mean x)^2)
    alpha_se = (
        math.sqrt(float((residual**2).sum()) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
        if len(x) > 2
        else math.nan
    )
    return PowerLawFit(alpha, n_c, r2, len(x), float(np.ptp(x) / math.log(10)), alpha_se)


@dataclass(frozen=True)
class FloorPowerLawFit:
    """L(N) = E + A N^-alpha: a power law above an irreducible loss E, fitted by least squares in L."""

    alpha: float  # the exponent of the reducible part (positive when the loss falls with N)
    a: float  # the scale A
    floor: float  # the irreducible loss E (nats), in [0, min loss)
    rms: float  # root-mean-square residual of the fit (nats)
    max_residual: float  # largest |fit - loss| over the points (nats)
    n_points: int

    def __call__(self, n):
        """The fitted loss at N (float or array)."""
        return self.floor + self.a * np.asarray(n, dtype=np.float64) ** -self.alpha


def fit_power_law_floor(n: Sequence[float], loss: Sequence[float], grid: int = 4000) -> FloorPowerLawFit:
    """Fit L = E + A N^-alpha to points (n_i, loss_i): Kaplan et al.'s law with an irreducible term.

    E is profiled on `grid` values in [0, min loss); for each, alpha and A come from a straight line through
    log(L - E) against log N, and the E whose curve has the smallest squared error in L is kept. At a fixed
    training budget the loss cannot fall below what that budget allows, whatever N: this is the form of
    Kaplan et al.'s L(N, D) at fixed D, to a good approximation. Needs at least 3 distinct N.
    """
    x = np.asarray(n, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"n and loss must be 1-D of the same length, got {x.shape} and {y.shape}")
    if len(np.unique(x)) < 3:
        raise ValueError("need at least three distinct n to fit a power law with a floor")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ValueError("n and loss must be finite and > 0")
    grid = check_int("grid", grid, lo=2)
    logx = np.log(x)
    xc = logx - logx.mean()
    floors = np.linspace(0.0, y.min(), grid + 1)[:-1]  # (G,)
    logy = np.log(y[None, :] - floors[:, None])  # (G, P): one straight-line fit per candidate floor
    slope = (logy * xc).sum(1) / (xc**2).sum()
    intercept = logy.mean(1) - slope * logx.mean()
    residual = floors[:, None] + np.exp(intercept[:, None] + slope[:, None] * logx) - y  # (G, P), in L
    sse = (residual**2).sum(1)
    k = int(np.argmin(sse))
    return FloorPowerLawFit(
        -float(slope[k]),
        float(np.exp(intercept[k])),
        float(floors[k]),
        math.sqrt(float(sse[k]) / len(x)),
        float(np.abs(residual[k]).max()),
        len(x),
    )


def _constants(constants: dict | None) -> dict:
    if constants is not None and not isinstance(constants, dict):
        raise TypeError(f"constants must be a dict (E, A, B, alpha, beta) or None, got {constants!r}")
    c = dict(HOFFMANN2022 if constants is None else constants)
    missing = {"E", "A", "B", "alpha", "beta"} - set(c)
    if missing:
        raise ValueError(f"constants is missing {sorted(missing)}")
    return c


def chinchilla_loss(n_params, n_tokens, constants: dict | None = None):
    """Hoffmann et al.'s parametric loss E + A / N^alpha + B / D^beta (nats per token, their data)."""
    c = _constants(constants)
    for name, value in (("n_params", n_params), ("n_tokens", n_tokens)):
        if isinstance(value, (str, bytes, bool)) or value is None:
            raise TypeError(f"{name} must be a number or an array of numbers, got {type(value).__name__}")
    N, D = np.asarray(n_params, dtype=np.float64), np.asarray(n_tokens, dtype=np.float64)
    if not (np.isfinite(N).all() and (N > 0).all() and np.isfinite(D).all() and (D > 0).all()):
        raise ValueError("n_params and n_tokens must be finite and > 0")
    out = c["E"] + c["A"] / N ** c["alpha"] + c["B"] / D ** c["beta"]
    return float(out) if out.ndim == 0 else out


def chinchilla_exponents(constants: dict | None = None) -> tuple[float, float]:
    """(a, b) with N_opt ~ C^a and D_opt ~ C^b: a = beta / (alpha + beta), b = alpha / (alpha + beta)."""
    c = _constants(constants)
    s = c["alpha"] + c["beta"]
    return c["beta"] / s, c["alpha"] / s


def compute_optimal(flops: float, constants: dict | None = None) -> tuple[float, float]:
    """(N_opt, D_opt) minimizing the parametric loss subject to 6 N D = flops (Hoffmann et al., eq. 4).

    N_opt = G (C / 6)^a and D_opt = (C / 6)^b / G, with G = (alpha A / (beta B))^(1 / (alpha + beta)).
    """
    if not (is_number(flops) and 0 < flops < math.inf):
        raise ValueError(f"flops must be a finite number > 0, got {flops!r}")
    c = _constants(constants)
    a, b = chinchilla_exponents(c)
    G = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1.0 / (c["alpha"] + c["beta"]))
    return G * (flops / 6.0) ** a, (flops / 6.0) ** b / G


def rule_of_thumb(flops: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """(N, D) with D = tokens_per_param x N and 6 N D = flops: the "20 tokens per parameter" reading."""
    if not (is_number(flops) and 0 < flops < math.inf):
        raise ValueError(f"flops must be a finite number > 0, got {flops!r}")
    if not (is_number(tokens_per_param) and tokens_per_param > 0):
        raise ValueError(f"tokens_per_param must be a number > 0, got {tokens_per_param!r}")
    n = math.sqrt(flops / (6.0 * tokens_per_param))
    return n, tokens_per_param * n
