"""Inference economics: arithmetic intensity and the roofline, this machine's peak FLOP rate and
bandwidth, seed 002's cost model next to a corrected one, and drafts for speculative decoding made of
the target's own blocks. The encoder's niche (classifying sentences with an encoder or by prompting a
decoder) is in :mod:`anatomy.experiments.encoder_niche`, the chapter's figures and tables in
:mod:`anatomy.experiments.inference_economics_plots`.

Everything here is counted from a :class:`~anatomy.model.Config` (no weights needed), so the same functions
describe SmolLM2 running on this machine and Llama-3-70B on a datacenter GPU. Conventions:

* A multiply-add is 2 FLOPs. Attention FLOPs count only the (query, key) pairs the mask lets through
  (``visible_pairs``): 2 * head_dim for q.k and 2 * head_dim for the weighted sum of values, per pair and
  query head. Softmax, norms, RoPE and activations are left out (they are < 1 % here).
* Bytes are the minimum traffic to main memory for one forward call: every weight once (whatever the batch
  size), the KV cache read once, the new keys and values written once. Activations are assumed to stay in
  cache; that is optimistic for long prefills, which are compute-bound anyway.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anatomy import decode
from anatomy._checks import check_dtype, check_float, check_instance, check_int, check_tensor, check_values
from anatomy.cost import forward_flops, linear_params, step_bytes
from anatomy.experiments.kv_cache import seed002_kv_bytes_per_token
from anatomy.model import Config, Transformer
from anatomy.timing import interleaved_times

__all__ = [
    "A100",
    "SEED002_LATENCY_TABLE",
    "Hardware",
    "batch_decode_sweep",
    "latency_estimate",
    "measure_bandwidth",
    "measure_matmul_flops",
    "ridge_point",
    "roofline",
    "seed002_costs",
    "seed002_latency_rows",
    "truncated_drafts",
]


def roofline(intensity, peak_flops: float, bandwidth: float):
    """Attainable FLOP/s at an arithmetic intensity (FLOP/byte): min(peak, intensity * bandwidth)."""
    check_float("peak_flops", peak_flops, lo=0, lo_open=True)
    check_float("bandwidth", bandwidth, lo=0, lo_open=True)
    check_values("intensity", intensity, lo=0)
    if isinstance(intensity, torch.Tensor):
        return torch.clamp(intensity * bandwidth, max=peak_flops)
    try:
        import numpy as np

        if isinstance(intensity, np.ndarray):
            return np.minimum(intensity * bandwidth, peak_flops)
    except ImportError:  # pragma: no cover
        pass
    return min(float(intensity) * bandwidth, peak_flops)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where a kernel stops being memory-bound: peak / bandwidth."""
    check_float("peak_flops", peak_flops, lo=0, lo_open=True)
    check_float("bandwidth", bandwidth, lo=0, lo_open=True)
    return peak_flops / bandwidth


@dataclass(frozen=True)
class Hardware:
    """A machine for the roofline: peak FLOP/s and memory bandwidth (bytes/s)."""

    name: str
    peak_flops: float
    bandwidth: float

    @property
    def ridge(self) -> float:
        return ridge_point(self.peak_flops, self.bandwidth)


A100 = Hardware("A100 (seed 002's numbers: 312 TFLOP/s bf16, 2 TB/s)", 312e12, 2e12)


# ---------------------------------------------------------------------------------------------------------
# Seed 002's cost model, as written, and a corrected one
# ---------------------------------------------------------------------------------------------------------

# Seed 002's printed table (A100 80GB, FP16): (model, params in billions, input tokens, output tokens,
# prefill ms, decode ms, total ms). These are the source's claims, quoted to be checked, not results.
SEED002_LATENCY_TABLE: tuple[tuple[str, float, int, int, float, float, float], ...] = (
    ("7B", 7.0, 512, 128, 3.3, 38.4, 41.7),
    ("7B", 7.0, 2048, 128, 13.1, 46.1, 59.2),
    ("7B", 7.0, 2048, 512, 13.1, 215.0, 228.1),
    ("70B", 70.0, 512, 128, 33.0, 384.0, 417.0),
    ("70B", 70.0, 2048, 512, 131.0, 2150.0, 2281.0),
)


def seed002_costs(params_billion: float, seq_len: int, gen_len: int) -> dict[str, float]:
    """Seed 002's inference-cost function, re-implemented step by step as the seed describes it.

    Its shape guesses: d_model = 2 * int(sqrt(P / 12)) and n_layers = int(P / (12 d_model^2)); prefill
    = 2 P seq_len FLOPs at 312 TFLOP/s; decode = the KV cache (its formula 2 L 2 d 2 bytes per token,
    over seq_len + gen_len tokens) read at 2 TB/s per generated token. Weight reads are not counted.
    Returns the intermediate values too, so the reader can see where the numbers come from.
    """
    check_float("params_billion", params_billion, lo=0, lo_open=True)
    check_int("seq_len", seq_len, lo=1)
    check_int("gen_len", gen_len, lo=0)
    P = params_billion * 1e9
    d_model = int((P / 12) ** 0.5) * 2
    n_layers = int(P / (12 * d_model * d_model))
    prefill_ms = 2 * P * seq_len / A100.peak_flops * 1e3
    kv_per_token = 2 * n_layers * 2 * d_model * 2
    decode_step_ms = kv_per_token * (seq_len + gen_len) / A100.bandwidth * 1e3
    return {
        "d_model": d_model,
        "n_layers": n_layers,
        "prefill_ms": prefill_ms,
        "decode_step_ms": decode_step_ms,
        "decode_ms": decode_step_ms * gen_len,
        "total_ms": prefill_ms + decode_step_ms * gen_len,
    }


def latency_estimate(
    config: Config,
    seq_len: int,
    gen_len: int,
    hardware: Hardware = A100,
    *,
    weight_bytes: int = 2,
    kv_bytes: int = 2,
    batch: int = 1,
) -> dict[str, float]:
    """Roofline latency of prefill (seq_len tokens) and of gen_len decode steps at 100 % of the hardware.

    Each call takes max(FLOPs / peak, bytes / bandwidth): a lower bound that a real system approaches but
    never reaches. Decode steps read every weight and the whole cache; the cache grows step by step.
    """
    c = check_instance("config", config, Config, "an anatomy Config")
    check_int("seq_len", seq_len, lo=1)
    check_int("gen_len", gen_len, lo=0)
    check_instance("hardware", hardware, Hardware, "a Hardware")
    f = forward_flops(c, seq_len, batch=batch, logits="last")["total"]
    b = step_bytes(c, seq_len, batch=batch, weight_bytes=weight_bytes, kv_bytes=kv_bytes)["total"]
    prefill = max(f / hardware.peak_flops, b / hardware.bandwidth)
    decode = 0.0
    weights_only = 0.0
    for t in range(gen_len):
        ctx = seq_len + t
        f = forward_flops(c, 1, ctx, batch=batch)["total"]
        by = step_bytes(c, 1, ctx, batch=batch, weight_bytes=weight_bytes, kv_bytes=kv_bytes)
        decode += max(f / hardware.peak_flops, by["total"] / hardware.bandwidth)
        weights_only += by["weights"] / hardware.bandwidth
    return {
        "prefill_ms": prefill * 1e3,
        "decode_ms": decode * 1e3,
        "total_ms": (prefill + decode) * 1e3,
        "decode_weights_ms": weights_only * 1e3,
        "weights_gb": (c.n_layers * linear_params(c) + c.vocab_size * c.d_model) * weight_bytes / 1e9,
    }


def seed002_latency_rows(real: dict[str, Config], hardware: Hardware = A100) -> list[dict]:
    """Seed 002's latency table recomputed, one dict per row of :data:`SEED002_LATENCY_TABLE`: the row's
    ``name``, ``n_in``, ``n_out`` and the table's ``table_prefill_ms``, ``table_decode_ms``; ``own``, seed
    002's function as written (:func:`seed002_costs`); ``kv_decode_ms``, the decode time of its KV formula
    read at 2 TB/s with the real configuration ``real[name]`` (e.g. Llama-2-7B for "7B"); and ``est``, the
    roofline estimate that also counts the weights (:func:`latency_estimate` on ``hardware``)."""
    check_instance("real", real, dict, "a dict name -> Config")
    check_instance("hardware", hardware, Hardware, "a Hardware")
    rows = []
    for name, params, n_in, n_out, s_pre, s_dec, _ in SEED002_LATENCY_TABLE:
        c = check_instance(f"real[{name!r}]", real.get(name), Config, "an anatomy Config")
        kv_decode = sum(seed002_kv_bytes_per_token(c.n_layers, c.d_model) * (n_in + t) for t in range(n_out))
        rows.append(
            {
                "name": name,
                "n_in": n_in,
                "n_out": n_out,
                "table_prefill_ms": s_pre,
                "table_decode_ms": s_dec,
                "own": seed002_costs(params, n_in, n_out),
                "kv_decode_ms": kv_decode / 2e12 * 1e3,
                "est": latency_estimate(c, n_in, n_out, hardware),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------
# Measuring this machine
# ---------------------------------------------------------------------------------------------------------


def measure_matmul_flops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict:
    """Achievable FLOP/s: time an (n x n) @ (n x n) matmul (2 n^3 FLOPs). Returns median, best, samples."""
    check_int("n", n, lo=16)
    check_int("repeats", repeats, lo=1)
    check_dtype("dtype", dtype, floating=True)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    matmul = {"matmul": lambda: torch.matmul(a, b, out=out)}
    times = interleaved_times(matmul, repeats, threads=None)["matmul"]
    flops = 2 * n**3
    return {
        "flops": flops,
        "seconds": times,
        "median": flops / statistics.median(times),
        "best": flops / min(times),
    }


def measure_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> dict:
    """Achievable memory bandwidth: time a copy of an ``nbytes`` float32 buffer into another (read + write
    = 2 * nbytes of traffic). Use a buffer far larger than the CPU caches. Returns median, best, samples."""
    check_int("nbytes", nbytes, lo=2**20)
    check_int("repeats", repeats, lo=1)
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    times = interleaved_times({"copy": lambda: dst.copy_(src)}, repeats, threads=None)["copy"]
    moved = 2 * src.numel() * 4
    return {
        "bytes": moved,
        "seconds": times,
        "median": moved / statistics.median(times),
        "best": moved / min(times),
    }


@torch.inference_mode()
def batch_decode_sweep(
    model: Transformer, context_ids: torch.Tensor, batches: Sequence[int] = (1, 4, 16), repeats: int = 3
) -> dict:
    """Time one decode step for B sequences at once (each with the context ``context_ids`` (1, P + 1) cached
    up to its last token, which is the token decoded), for each B in ``batches``. The weights are read once
    per step whatever B is, so the arithmetic intensity grows with B. Every B runs the model's textbook path
    (:func:`anatomy.decode.disabled`: B = 1 would otherwise take the one-call C step), so the sweep compares
    one implementation across batch sizes. Returns per B: ``seconds`` (median), ``flops``, ``bytes`` (fp32,
    counted), ``intensity`` and ``achieved`` FLOP/s."""
    check_instance("model", model, Transformer, "an anatomy Transformer")
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batches must be positive ints, got {batches!r}")
    if context_ids.dim() != 2 or context_ids.shape[1] < 2:
        raise ValueError(f"context_ids must be (1, P + 1) with P >= 1, got {tuple(context_ids.shape)}")
    model.eval()
    P = context_ids.shape[1] - 1
    shared = model.new_cache(max_len=P + 1)  # the context is the same for every sequence: computed once
    model(context_ids[:, :P], cache=shared)
    fns = {}
    for B in batches:
        cache = model.new_cache(batch_size=B, max_len=P + 1)
        cache.claim(model.layers)
        for layer in range(model.config.n_layers):
            cache.update(
                layer, shared.keys(layer).expand(B, -1, -1, -1), shared.values(layer).expand(B, -1, -1, -1)
            )
        cache.commit(context_ids[:, :P].expand(B, P))
        last = context_ids[:, P:].expand(B, 1)

        def step(cache=cache, last=last):
            cache.truncate(P)
            model(last, cache=cache)

        fns[B] = step
    with decode.disabled():
        times = interleaved_times(fns, repeats=repeats, threads=None)
    out: dict = {
        "batch": list(batches),
        "seconds": [],
        "flops": [],
        "bytes": [],
        "intensity": [],
        "achieved": [],
    }
    for B in batches:
        sec = statistics.median(times[B])
        f = forward_flops(model.config, 1, P, batch=B)["total"]
        b = step_bytes(model.config, 1, P, batch=B)["total"]
        for key, value in (
            ("seconds", sec),
            ("flops", f),
            ("bytes", b),
            ("intensity", f / b),
            ("achieved", f / sec),
        ):
            out[key].append(value)
    return out


# ---------------------------------------------------------------------------------------------------------
# Speculative decoding: drafts made of the target's own first blocks
# ---------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def truncated_drafts(model: Transformer, input_ids: torch.Tensor, start: int, depths: Sequence[int]) -> dict:
    """How often a draft made of ``model``'s first k blocks picks ``model``'s own greedy token, for each k in
    ``depths``, and what share of a decode step's weight bytes such a draft reads.

    input_ids (1, N): a sequence whose tokens ``start``..N-1 were generated; the greedy choices are compared
    at the N - start positions that predict them. The draft of depth k is the hidden state after block k
    through ``model``'s final norm and LM head: exactly what :func:`anatomy.speculative.layer_draft` computes,
    here from one forward pass that keeps the hidden state after every block, instead of one pass of the
    first k blocks per depth. Returns ``alpha`` (depth -> share of agreeing positions) and ``bytes_ratio``
    (depth -> weight bytes of one draft step / one target step, :func:`anatomy.cost.step_bytes`).
    """
    from dataclasses import replace

    check_instance("model", model, Transformer, "an anatomy Transformer")
    c = model.config
    if c.mask != "causal" or not c.lm_head or not c.final_norm:
        raise ValueError("model must be a decoder with a final norm and an LM head")
    check_tensor("input_ids", input_ids, kind="int", dim=2)
    if input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be (1, N), got {tuple(input_ids.shape)}")
    check_int("start", start, lo=1, hi=input_ids.shape[1] - 1)
    if isinstance(depths, (str, bytes)) or not hasattr(depths, "__iter__") or not depths:
        raise ValueError(f"depths must be a non-empty sequence of block counts, got {depths!r}")
    for k in depths:
        check_int("depths", k, lo=1, hi=c.n_layers - 1)
    was_training = model.training
    try:  # in eval mode and without autograd; the caller's model is left as it was
        with torch.inference_mode():
            out = model.eval()(input_ids, return_hidden=True)
            target = out.logits[0, start - 1 : -1].argmax(-1)
            target_bytes = step_bytes(c, 1)["weights"]
            alpha, bytes_ratio = {}, {}
            for k in depths:
                hidden = out.hidden_states[k][:, start - 1 : -1]  # after block k (only the last is normed)
                draft = model.lm_head(model.norm(hidden))[0].argmax(-1)
                alpha[k] = (draft == target).double().mean().item()
                bytes_ratio[k] = step_bytes(replace(c, n_layers=k), 1)["weights"] / target_bytes
    finally:
        model.train(was_training)
    return {"alpha": alpha, "bytes_ratio": bytes_ratio}
