"""Rank of attention matrices and of token representations.

Three questions, three groups of functions:

* one attention matrix: how close is softmax(Q K^T) to low rank? (:func:`numerical_rank`,
  :func:`effective_rank`, :func:`smallest_singular_value`, :func:`log10_det`, :func:`matrix_stats`,
  :func:`random_attention`, :func:`single_matrix_sweep`, :func:`triangular_condition`);
* many attention matrices in a row: products of attention matrices (:func:`attention_product`) and the rank
  collapse of token representations with depth, for stacks built from :mod:`anatomy.model`'s modules
  (:data:`VARIANTS`, :func:`collapse_stack`, :func:`collapse_curves`), measured by
  :func:`residual_to_rank_one` (Dong et al. 2021);
* real models: per-head spectra and the attention sink (:func:`attention_maps`, :func:`head_stats`,
  :func:`layer_residuals`), and the plots of the chapter.

Singular values are computed in float64. The smallest singular value of a triangular (causal) matrix is
computed from its inverse by triangular substitution, which resolves values far below what an SVD can
(an SVD only resolves singular values above about ``n * eps * sigma_max``); the unit tests check it against
60-digit arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from anatomy._checks import check_dtype, check_float, check_generator, check_instance, check_int
from anatomy.attention import attention_probs
from anatomy.model import Attention, Block, Config, Transformer, make_norm
from anatomy.timing import one_thread

__all__ = [
    "VARIANTS",
    "VARIANT_LABELS",
    "attention_maps",
    "attention_product",
    "collapse_curves",
    "collapse_stack",
    "collapse_states",
    "effective_rank",
    "head_stats",
    "inspect_model",
    "layer_residuals",
    "log10_det",
    "matrix_stats",
    "numerical_rank",
    "random_attention",
    "residual_to_rank_one",
    "singular_values",
    "single_matrix_sweep",
    "smallest_singular_value",
    "triangular_condition",
]


_MASKS = ("causal", "bidirectional")


# ----------------------------------------------------------------------------------- argument checks


def _check_matrix(A, name: str = "A", square: bool = False) -> torch.Tensor:
    if isinstance(A, np.ndarray):
        A = torch.from_numpy(A)
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(A).__name__}")
    if A.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., rows, cols), got shape {tuple(A.shape)}")
    if not A.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {A.dtype}")
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(A.shape)}")
    if square and A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square (..., n, n), got shape {tuple(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return A


def _check_mask(mask: str) -> str:
    if mask not in _MASKS:
        raise ValueError(f"mask must be one of {_MASKS}, got {mask!r}")
    return mask


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


# ------------------------------------------------------------------------------- one matrix: spectra


def singular_values(A: torch.Tensor) -> torch.Tensor:
    """Singular values of A (..., n, m), in float64, largest first: (..., min(n, m))."""
    A = _check_matrix(A)
    return torch.linalg.svdvals(A.double())


def numerical_rank(A: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Number of singular values above ``rtol * sigma_max``, per matrix of A (..., n, m) -> (...,) long.

    rtol defaults to ``max(n, m) * eps`` of A's dtype (NumPy's ``matrix_rank`` rule): singular values
    below it cannot be told apart from rounding errors of a matrix stored in that precision.
    """
    A = _check_matrix(A)
    if rtol is None:
        rtol = max(A.shape[-2:]) * _eps(A.dtype)
    rtol = check_float("rtol", rtol, lo=0, lo_open=True)
    s = singular_values(A)
    return (s > rtol * s[..., :1]).sum(-1)


def effective_rank(A: torch.Tensor) -> torch.Tensor:
    """Effective rank exp(H(p)), p = sigma / sum(sigma) (Roy & Vetterli 2007): (..., n, m) -> (...,) float64.

    Between 1 (one singular value carries everything) and min(n, m) (a flat spectrum); continuous, so it
    sees a spectrum that decays fast even when no singular value is exactly zero.
    """
    s = singular_values(A)
    total = s.sum(-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("A has an all-zero matrix: its effective rank is undefined")
    p = s / total
    entropy = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)
    return torch.exp(entropy)


def _is_lower_triangular(A: torch.Tensor) -> bool:
    return A.shape[-1] == A.shape[-2] and bool((torch.triu(A, diagonal=1) == 0).all())


def smallest_singular_value(A: torch.Tensor) -> torch.Tensor:
    """sigma_min of each square matrix A (..., n, n), float64.

    For a lower-triangular A (a causal attention matrix) it is 1 / ||A^-1||_2 with A^-1 from forward
    substitution, which stays accurate where the SVD does not (the SVD cannot resolve sigma_min below about
    n * eps * sigma_max); when ||A^-1|| overflows float64 (sigma_min < ~1e-308) the result is 0.0.
    Other matrices use the SVD.
    """
    A = _check_matrix(A, square=True).double()
    if not _is_lower_triangular(A):
        return singular_values(A)[..., -1]
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    if bool((diag == 0).any()):
        return torch.zeros(A.shape[:-2], dtype=torch.float64)
    eye = torch.eye(A.shape[-1], dtype=torch.float64).expand_as(A)
    inv = torch.linalg.solve_triangular(A, eye, upper=False)
    finite = torch.isfinite(inv).flatten(-2).all(-1)
    safe = torch.where(finite[..., None, None], inv, torch.zeros_like(inv))
    norm = torch.linalg.matrix_norm(safe, ord=2)
    return torch.where(finite, 1.0 / norm, torch.zeros_like(norm))


def log10_det(A: torch.Tensor) -> torch.Tensor:
    """log10 |det A| for square A (..., n, n), float64.

    For a lower-triangular A it is the exact sum of log10 of the diagonal (det = product of the diagonal:
    the seeds' argument); otherwise LU (``torch.linalg.slogdet``).
    """
    A = _check_matrix(A, square=True).double()
    if _is_lower_triangular(A):
        return torch.log10(torch.diagonal(A, dim1=-2, dim2=-1).abs()).sum(-1)
    return torch.linalg.slogdet(A)[1] / math.log(10.0)


def matrix_stats(A: torch.Tensor, rtol: float | None = None) -> dict[str, float]:
    """Rank measures of one square matrix A (n, n): a dict of plain floats.

    numerical_rank (at ``rtol``, default n * eps of A's dtype), rank_float32 (at n * eps of float32: what a
    model computing in float32 could distinguish), effective_rank, sigma_max, sigma_min (see
    :func:`smallest_singular_value`), log10_sigma_min, log10_cond = log10(sigma_max / sigma_min) and
    log10_det.
    """
    A = _check_matrix(A, square=True)
    if A.dim() != 2:
        raise ValueError(f"A must be one matrix (n, n), got shape {tuple(A.shape)}")
    n = A.shape[-1]
    s = singular_values(A)
    smin = float(smallest_singular_value(A))
    smax = float(s[0])
    return {
        "n": n,
        "numerical_rank": int(numerical_rank(A, rtol)),
        "rank_float32": int((s > n * _eps(torch.float32) * s[0]).sum()),
        "effective_rank": float(effective_rank(A)),
        "sigma_max": smax,
        "sigma_min": smin,
        "log10_sigma_min": math.log10(smin) if smin > 0 else -math.inf,
        "log10_cond": math.log10(smax / smin) if smin > 0 else math.inf,
        "log10_det": float(log10_det(A)),
    }


def random_attention(
    n: int,
    d: int,
    logit_std: float,
    mask: str = "bidirectional",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random attention matrix and its logits: (A, logits), each (n, n).

    Q, K (n, d) have independent N(0, 1) entries; logits = logit_std * Q K^T / sqrt(d) (so their standard
    deviation is about logit_std) and A = softmax(logits) under ``mask``, computed by anatomy's kernel
    (:func:`anatomy.attention_probs`). The logits are returned before masking: Q K^T has rank at most d,
    which is the seeds' premise; A is what the seeds call "the attention matrix".
    """
    n, d = check_int("n", n, lo=1), check_int("d", d, lo=1)
    logit_std = check_float("logit_std", logit_std, lo=0, lo_open=True)
    _check_mask(mask)
    check_generator("generator", generator)
    check_dtype("dtype", dtype, floating=True)
    q = torch.randn(1, 1, n, d, generator=generator, dtype=dtype)
    k = torch.randn(1, 1, n, d, generator=generator, dtype=dtype)
    A = attention_probs(q * logit_std, k, mask)[0, 0]
    logits = (q[0, 0] @ k[0, 0].T) * (logit_std / math.sqrt(d))  # before the mask: rank <= d
    return A, logits


@one_thread()
def single_matrix_sweep(
    n: int = 128,
    d: int = 8,
    logit_stds: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    seeds: Sequence[int] = (0, 1, 2),
) -> list[dict]:
    """Rank measures of random attention matrices, causal and bidirectional, across logit scales.

    One row per (mask, logit_std, seed): the keys of :func:`matrix_stats` plus mask, logit_std, seed,
    logits_rank (the numerical rank of the logits Q K^T before masking, at most d) and
    max_weight (the mean over rows of the largest attention weight: how peaked the rows are).
    """
    n, d = check_int("n", n, lo=1), check_int("d", d, lo=1)
    if not logit_stds or not seeds:
        raise ValueError("logit_stds and seeds must not be empty")
    for s in logit_stds:
        check_float("logit_stds", s, lo=0, lo_open=True)
    for s in seeds:
        check_int("seeds", s)
    rows = []
    for mask in _MASKS:
        for std in logit_stds:
            for seed in seeds:
                g = torch.Generator().manual_seed(int(seed))
                A, logits = random_attention(n, d, std, mask, g)
                stats = matrix_stats(A)
                stats.update(
                    mask=mask,
                    logit_std=float(std),
                    seed=int(seed),
                    logits_rank=int(numerical_rank(logits)),
                    max_weight=float(A.max(-1).values.mean()),
                )
                rows.append(stats)
    return rows


@one_thread()
def triangular_condition(
    ns: Sequence[int] = (8, 16, 32, 64, 96, 128),
    seeds: Sequence[int] = tuple(range(8)),
    logit_std: float = 1.0,
    d: int = 8,
) -> dict[str, np.ndarray]:
    """log10 condition numbers against n: random triangular, causal attention and bidirectional attention.

    "gaussian": lower-triangular matrices with N(0, 1) entries, whose condition number grows like 2^n
    (Viswanath & Trefethen 1998); "causal" / "bidirectional": random attention matrices
    (:func:`random_attention` with ``logit_std`` and ``d``). Returns {"n": (len(ns),), and for each kind
    an array (len(ns), len(seeds)) of log10 cond} (inf where sigma_min underflows float64).
    """
    ns = [check_int("ns[i]", n, lo=2) for n in ns]
    if not ns or not seeds:
        raise ValueError("ns and seeds must not be empty")
    out = {"n": np.array(ns)}
    for kind in ("gaussian", "causal", "bidirectional"):
        table = np.empty((len(ns), len(seeds)))
        for i, n in enumerate(ns):
            for j, seed in enumerate(seeds):
                g = torch.Generator().manual_seed(1000 * int(seed) + n)
                if kind == "gaussian":
                    A = torch.randn(n, n, generator=g, dtype=torch.float64).tril()
                else:
                    A, _ = random_attention(n, d, logit_std, kind, g)
                table[i, j] = matrix_stats(A)["log10_cond"]
        out[kind] = table
    return out


# ------------------------------------------------------------------------ many matrices: products


def residual_to_rank_one(X: torch.Tensor, skip: int = 0) -> torch.Tensor:
    """Relative distance of token representations to rank one: ||X - 1 xbar^T||_F / ||X||_F.

    X: (..., n, d), one row per token; xbar is the mean row (the closest matrix of the form 1 x^T in the
    Frobenius norm), so the result is 0 exactly when all tokens are equal (Dong et al. 2021's res(X),
    normalised by ||X||). ``skip`` leaves out the first `skip` tokens (e.g. an attention-sink token whose
    huge norm would dominate both norms). Returns (...,) float64.
    """
    X = _check_matrix(X, "X")
    skip = check_int("skip", skip, lo=0)
    if skip >= X.shape[-2]:
        raise ValueError(f"skip must be less than the number of tokens {X.shape[-2]}, got {skip}")
    X = X[..., skip:, :].double()
    norm = torch.linalg.matrix_norm(X)
    if bool((norm == 0).any()):
        raise ValueError("X is all zeros: its relative residual is undefined")
    return torch.linalg.matrix_norm(X - X.mean(-2, keepdim=True)) / norm


@one_thread()
def attention_product(
    n: int = 64, d: int = 8, depth: int = 64, mask: str = "causal", logit_std: float = 1.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """P_l = A_l ... A_1 for independent random attention matrices A_l; how P_l approaches rank one.

    Returns arrays indexed by l = 1..depth: "depth", "sigma_ratio" (sigma_2 / sigma_1 of P_l, from the SVD:
    it bottoms out near 1e-16, float64's resolution), "residual" (:func:`residual_to_rank_one` of P_l),
    "log10_det" (exact for causal: the sum of the factors' log10 det), "layer_rank" (numerical rank of A_l
    itself) and "layer_log10_sigma_min" (of A_l).
    """
    n, d, depth = check_int("n", n, lo=1), check_int("d", d, lo=1), check_int("depth", depth, lo=1)
    _check_mask(mask)
    g = torch.Generator().manual_seed(check_int("seed", seed, lo=0))
    P = torch.eye(n, dtype=torch.float64)
    rows: dict[str, list] = {
        k: [] for k in ("sigma_ratio", "residual", "log10_det", "layer_rank", "layer_log10_sigma_min")
    }
    det = 0.0
    for _ in range(depth):
        A, _ = random_attention(n, d, logit_std, mask, g)
        P = A @ P
        det += float(log10_det(A))
        s = singular_values(P)
        smin = float(smallest_singular_value(A))
        rows["sigma_ratio"].append(float(s[1] / s[0]))
        rows["residual"].append(float(residual_to_rank_one(P)))
        rows["log10_det"].append(det)
        rows["layer_rank"].append(int(numerical_rank(A)))
        rows["layer_log10_sigma_min"].append(math.log10(smin) if smin > 0 else -math.inf)
    out = {k: np.array(v) for k, v in rows.items()}
    out["depth"] = np.arange(1, depth + 1)
    return out


# --------------------------------------------------------------- rank collapse of representations

VARIANTS = ("attention", "attention+layernorm", "attention+skip", "attention+mlp", "block", "block/sqrt(L)")
VARIANT_LABELS = {
    "attention": "pure attention",
    "attention+layernorm": "attention + LayerNorm",
    "attention+skip": "attention + skip",
    "attention+mlp": "attention + MLP",
    "block": "full block (pre-LN)",
    "block/sqrt(L)": r"full block, branches $\times 1/\sqrt{L}$",
}


class _Layer(nn.Module):
    """One layer of a collapse stack: anatomy's own Attention / MLP / LayerNorm, wired as `variant` says."""

    def __init__(self, config: Config, variant: str) -> None:
        super().__init__()
        self.variant, self.mask = variant, config.mask
        if variant.startswith("block"):
            self.block = Block(config)  # pre-LN: x + attn(LN(x)), then x + mlp(LN(x))
        else:
            self.attn = Attention(config)
            if variant == "attention+layernorm":
                self.norm = make_norm(config)
            if variant == "attention+mlp":
                self.mlp = Block(config).mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant.startswith("block"):
            return self.block(x, mask=self.mask)[0]
        a, _ = self.attn(x, mask=self.mask)
        if self.variant == "attention":
            return a
        if self.variant == "attention+layernorm":
            return self.norm(a)
        if self.variant == "attention+skip":
            return x + a
        return self.mlp(a)  # attention+mlp


def collapse_stack(
    variant: str,
    mask: str,
    depth: int,
    d_model: int = 32,
    n_heads: int = 4,
    seed: int = 0,
    weight_std: float | None = None,
) -> nn.ModuleList:
    """A stack of `depth` randomly initialised layers of kind `variant` (one of :data:`VARIANTS`), float64.

    Built from :mod:`anatomy.model`'s ``Attention``, ``MLP``, LayerNorm and pre-LN ``Block`` (GELU MLP,
    no position encoding, no biases), with every weight matrix drawn from N(0, weight_std^2);
    weight_std defaults to 1/sqrt(fan_in), which keeps the size of the signal through each projection.
    "block/sqrt(L)" multiplies both residual branches by 1/sqrt(depth) (Noci et al. 2022).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    _check_mask(mask)
    depth = check_int("depth", depth, lo=1)
    d_model, n_heads = check_int("d_model", d_model, lo=1), check_int("n_heads", n_heads, lo=1)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    if weight_std is not None:
        weight_std = check_float("weight_std", weight_std, lo=0, lo_open=True)
    config = Config(
        vocab_size=2,
        d_model=d_model,
        n_layers=depth,
        n_heads=n_heads,
        mask=mask,
        norm="layer",
        norm_bias=False,
        pos="none",
        mlp="gelu",
        attn_backend="sdpa",
        max_seq_len=4096,
    )
    torch.manual_seed(check_int("seed", seed, lo=0))
    scale = 1.0 / math.sqrt(depth) if variant == "block/sqrt(L)" else 1.0
    layers = nn.ModuleList()
    for _ in range(depth):
        layer = _Layer(config, variant)
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                std = weight_std if weight_std is not None else module.in_features**-0.5
                nn.init.normal_(module.weight, std=std)
        if scale != 1.0:
            with torch.no_grad():  # scaling the projections that write into the stream scales the branch
                layer.block.self_attn.o_proj.weight.mul_(scale)
                layer.block.mlp.down_proj.weight.mul_(scale)
        layers.append(layer)
    return layers.double().eval()


@torch.no_grad()
def collapse_states(layers: nn.ModuleList, X: torch.Tensor) -> list[torch.Tensor]:
    """Token representations through a collapse stack: [X_0 = X, X_1, ..., X_depth], each (B, n, d)."""
    check_instance("layers", layers, nn.ModuleList, "an nn.ModuleList (see collapse_stack)")
    X = _check_matrix(X, "X")
    if X.dim() != 3:
        raise ValueError(f"X must have shape (B, n, d), got {tuple(X.shape)}")
    width = next((m.normalized_shape[0] for m in layers.modules() if isinstance(m, nn.LayerNorm)), None)
    width = width or next((m.in_features for m in layers.modules() if isinstance(m, nn.Linear)), X.shape[-1])
    if X.shape[-1] != width:
        raise ValueError(f"X must have the layers' width d={width} in its last dim, got {tuple(X.shape)}")
    states = [X.double()]
    for layer in layers:
        states.append(layer(states[-1]))
    return states


@one_thread()
def collapse_curves(
    variants: Sequence[str] = VARIANTS,
    masks: Sequence[str] = _MASKS,
    depth: int = 32,
    n: int = 64,
    d_model: int = 32,
    n_heads: int = 4,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    keep_states: Sequence[int] = (),
) -> dict:
    """Relative residual to rank one of the token representations at every depth, per variant and mask.

    For each seed, X_0 (1, n, d_model) has N(0, 1) entries (the same X_0 and the same weights for the causal
    and the bidirectional stack of one seed), and a fresh stack of `depth` layers is drawn.
    Returns {"depth": (depth + 1,), "residual": {(variant, mask): (len(seeds), depth + 1)},
    "states": {(variant, mask, seed): [X_l for l in keep_states]}} (states only for the first seed).
    """
    depth, n = check_int("depth", depth, lo=1), check_int("n", n, lo=1)
    if not variants or not masks or not seeds:
        raise ValueError("variants, masks and seeds must not be empty")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"variants: each must be one of {VARIANTS}, got {v!r}")
    for m in masks:
        _check_mask(m)
    for k in keep_states:
        if not 0 <= k <= depth:
            raise ValueError(f"keep_states: each must be in [0, depth={depth}], got {k}")
    residual, states = {}, {}
    for variant in variants:
        for mask in masks:
            table = np.empty((len(seeds), depth + 1))
            for i, seed in enumerate(seeds):
                g = torch.Generator().manual_seed(10_000 + int(seed))
                X0 = torch.randn(1, n, d_model, generator=g, dtype=torch.float64)
                layers = collapse_stack(variant, mask, depth, d_model, n_heads, seed=int(seed))
                xs = collapse_states(layers, X0)
                table[i] = residual_to_rank_one(torch.cat(xs)).numpy()
                if i == 0 and keep_states:
                    states[(variant, mask)] = [xs[k][0] for k in keep_states]
            residual[(variant, mask)] = table
    return {
        "depth": np.arange(depth + 1),
        "residual": residual,
        "states": states,
        "keep_states": list(keep_states),
    }


# ------------------------------------------------------------------------------------ real models


@one_thread()
@torch.no_grad()
def attention_maps(model: Transformer, input_ids: torch.Tensor, **model_kwargs) -> torch.Tensor:
    """Every head's attention matrix for one sequence, from anatomy's kernel: (layers, heads, N, N) float32.

    input_ids: (1, N). Runs ``model(input_ids, return_attn=True)`` (the maps are the probabilities that
    :func:`anatomy.attention_probs` reconstructs from the tiled kernel's log-sum-exp).
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("input_ids must be a (1, N) tensor of token ids (one sequence)")
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids, return_attn=True, **model_kwargs)
    finally:
        model.train(was_training)
    return torch.stack([a[0] for a in out.attentions])


@one_thread()
def head_stats(maps: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-head rank measures of attention maps (layers, heads, N, N): a dict of (layers, heads) arrays.

    numerical_rank (at N * eps of the maps' dtype: the maps come out of a float32 model), effective_rank,
    sigma_min (:func:`smallest_singular_value`: exact for causal maps), log10_det, and sink (the mean
    attention weight on token 0 over the queries 1..N-1: query 0 of a causal map has nowhere else to look).
    """
    maps = _check_matrix(maps, "maps", square=True)
    if maps.dim() != 4:
        raise ValueError(f"maps must have shape (layers, heads, N, N), got {tuple(maps.shape)}")
    if maps.shape[-1] < 2:
        raise ValueError("maps need at least 2 tokens")
    smin = smallest_singular_value(maps)
    return {
        "numerical_rank": numerical_rank(maps).numpy(),
        "effective_rank": effective_rank(maps).numpy(),
        "sigma_min": smin.numpy(),
        "log10_det": log10_det(maps).numpy(),
        "sink": maps[..., 1:, 0].double().mean(-1).numpy(),
    }


def layer_residuals(hidden_states: Sequence[torch.Tensor], skip: int = 0) -> np.ndarray:
    """:func:`residual_to_rank_one` of each layer's hidden states (B=1, N, d) -> (len(hidden_states),)."""
    if not hidden_states:
        raise ValueError("hidden_states must not be empty")
    return np.array([float(residual_to_rank_one(h[0].detach(), skip)) for h in hidden_states])


@one_thread()
@torch.no_grad()
def inspect_model(model: Transformer, input_ids: torch.Tensor, **model_kwargs) -> dict:
    """Everything the attention rank chapter measures on a real model, for one sequence input_ids (1, N).

    Returns {"maps": (layers, heads, N, N) from :func:`attention_maps`, "heads": :func:`head_stats` of them,
    "residual": :func:`layer_residuals` of the hidden states (embeddings, then each layer),
    "residual_skip_first": the same without token 0, "norm_ratio": per hidden state, the norm of token 0's
    vector over the mean norm of the others (a huge value marks a "massive activation")}.
    """
    maps = attention_maps(model, input_ids, **model_kwargs)
    was_training = model.training
    model.eval()
    try:
        hidden = model(input_ids, return_hidden=True, **model_kwargs).hidden_states
    finally:
        model.train(was_training)
    ratio = np.array([float(h[0, 0].norm() / h[0, 1:].norm(dim=-1).mean()) for h in hidden])
    return {
        "maps": maps,
        "heads": head_stats(maps),
        "residual": layer_residuals(hidden),
        "residual_skip_first": layer_residuals(hidden, skip=1),
        "norm_ratio": ratio,
    }
