"""Inference economics: FLOPs and bytes per token, arithmetic intensity, the roofline, KV-cache sizes,
seed 002's cost model next to a corrected one, and time-to-first-token measurements for multi-turn chat.

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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from anatomy.cache import kv_cache_bytes
from anatomy.model import Config, EncoderDecoder, Transformer
from anatomy.timing import interleaved_times

__all__ = [
    "A100",
    "CLASSIFIERS",
    "DIALOGUE",
    "PUBLISHED",
    "PUBLISHED_SOURCES",
    "SEED002_LATENCY_TABLE",
    "SEED002_LLAMA70B_KV_PER_TOKEN",
    "Hardware",
    "chat_segments",
    "chunk_sweep",
    "compare_classifiers",
    "TOPICS",
    "attention_kind",
    "batch_decode_sweep",
    "decode_bytes",
    "dialogue_flops",
    "dialogue_ttft",
    "turn_ttft",
    "transformers_kv_cache",
    "encoder_decoder_like",
    "encdec_first_token_flops",
    "fewshot_classify",
    "forward_flops",
    "interleaved_times",
    "kv_bytes_per_token",
    "kv_table",
    "latency_estimate",
    "html_table",
    "linear_params",
    "label_prompts",
    "markdown_table",
    "nearest_prototype",
    "prompt_classify",
    "measure_bandwidth",
    "measure_matmul_flops",
    "param_counts",
    "published_config",
    "ridge_point",
    "roofline",
    "seed002_costs",
    "seed002_kv_bytes_per_token",
    "sentence_embeddings",
    "step_bytes",
    "stale_cache_error",
    "step_intensity",
    "topic_dataset",
    "visible_pairs",
    "with_mask",
]


# ---------------------------------------------------------------------------------------------------------
# Published configurations (from each model's config.json on the Hugging Face Hub)
# ---------------------------------------------------------------------------------------------------------

PUBLISHED_SOURCES: dict[str, str] = {
    "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M-Instruct config.json (and the GGUF this book loads)",
    "Llama-2-7B": "meta-llama/Llama-2-7b-hf config.json",
    "Falcon-7B": "tiiuae/falcon-7b config.json (multi_query: true)",
    "Llama-3-8B": "meta-llama/Meta-Llama-3-8B config.json",
    "Llama-3-70B": "meta-llama/Meta-Llama-3-70B config.json",
}


def _llama(vocab, d, layers, heads, kv_heads, d_ff, tie=False, head_dim=None, max_len=8192) -> Config:
    return Config(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                  head_dim=head_dim, d_ff=d_ff, max_seq_len=max_len, tie_embeddings=tie)


# name -> (builder, attention kind). Building a Config allocates nothing.
_PUBLISHED = {
    "SmolLM2-135M": (lambda: _llama(49152, 576, 30, 9, 3, 1536, tie=True), "GQA"),
    "Llama-2-7B": (lambda: _llama(32000, 4096, 32, 32, 32, 11008, max_len=4096), "MHA"),
    "Falcon-7B": (lambda: Config(vocab_size=65024, d_model=4544, n_layers=32, n_heads=71, n_kv_heads=1,
                                 head_dim=64, d_ff=4 * 4544, mlp="gelu", norm="layer", max_seq_len=2048,
                                 tie_embeddings=True), "MQA"),
    "Llama-3-8B": (lambda: _llama(128256, 4096, 32, 32, 8, 14336), "GQA"),
    "Llama-3-70B": (lambda: _llama(128256, 8192, 80, 64, 8, 28672), "GQA"),
}
PUBLISHED: tuple[str, ...] = tuple(_PUBLISHED)


def published_config(name: str) -> Config:
    """The anatomy Config of a published model (see ``PUBLISHED`` and ``PUBLISHED_SOURCES``)."""
    if name not in _PUBLISHED:
        raise ValueError(f"name must be one of {PUBLISHED}, got {name!r}")
    return _PUBLISHED[name][0]()


def attention_kind(config: Config) -> str:
    """'MHA' (one K/V head per query head), 'MQA' (one K/V head) or 'GQA' (groups in between)."""
    if config.n_kv_heads == config.n_heads:
        return "MHA"
    return "MQA" if config.n_kv_heads == 1 else "GQA"


# ---------------------------------------------------------------------------------------------------------
# Parameters and FLOPs
# ---------------------------------------------------------------------------------------------------------

def _check_config(config) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config must be an anatomy Config, got {type(config).__name__}")
    return config


def _check_count(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def linear_params(config: Config, *, cross_attention: bool = False) -> int:
    """Weights of one block's matrices (q, k, v, o and the MLP; + cross-attention q, k, v, o if asked)."""
    c = _check_config(config)
    attn = c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.d_model
    mlp = (3 if c.mlp == "swiglu" else 2) * c.d_model * c.d_ff
    return attn * (2 if cross_attention else 1) + mlp


def param_counts(config: Config) -> dict[str, int]:
    """Parameter counts by part: embedding, blocks (matrices), norms, head (0 if tied) and totals.

    ``non_embedding`` follows ``Transformer.num_params()``: everything but the token (and position)
    embedding tables; an untied LM head counts, a tied one is the embedding.
    """
    c = _check_config(config)
    norm = c.d_model * (2 if c.norm == "layer" and c.norm_bias else 1)
    blocks = c.n_layers * linear_params(c)
    norms = (2 * c.n_layers + int(c.final_norm)) * norm
    embedding = c.vocab_size * c.d_model + (c.max_seq_len * c.d_model if c.pos == "learned" else 0)
    head = 0 if (c.tie_embeddings or not c.lm_head) else c.vocab_size * c.d_model
    biases = 0
    if c.qkv_bias:
        biases += c.n_layers * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    if c.out_bias:
        biases += c.n_layers * c.d_model
    if c.mlp_bias:
        biases += c.n_layers * ((2 if c.mlp == "swiglu" else 1) * c.d_ff + c.d_model)
    non_embedding = blocks + norms + head + biases
    return {"embedding": embedding, "blocks": blocks, "norms": norms, "head": head, "biases": biases,
            "non_embedding": non_embedding, "total": non_embedding + embedding}


def visible_pairs(mask: str, n_queries: int, n_keys: int, prefix_len: int | None = None) -> int:
    """How many (query, key) pairs a mask lets through, queries being the last n_queries of n_keys positions.

    The closed form of ``anatomy.masks.dense_mask(mask, n_queries, n_keys, prefix_len=...).sum()``, without
    building the matrix (Llama-3-70B at 8k tokens would need 64M entries).
    """
    _check_count("n_queries", n_queries, 1)
    _check_count("n_keys", n_keys, n_queries)
    offset = n_keys - n_queries  # absolute position of query 0
    if mask == "bidirectional":
        return n_queries * n_keys
    # query r at position offset + r sees keys 0 .. offset + r (causal), plus keys < prefix_len (prefix LM)
    causal = n_queries * offset + n_queries * (n_queries + 1) // 2
    if mask == "causal":
        return causal
    if mask == "prefix":
        if prefix_len is None:
            raise ValueError("mask='prefix' needs prefix_len")
        p = min(_check_count("prefix_len", prefix_len, 0), n_keys)
        # queries whose causal reach (pos + 1) is below p see p keys instead
        k = p - offset - 1  # queries r < k see p keys instead of their causal reach offset + r + 1
        r_max = min(n_queries, max(0, k))
        extra = r_max * k - r_max * (r_max - 1) // 2
        return causal + extra
    raise ValueError(f"mask must be 'causal', 'bidirectional' or 'prefix', got {mask!r}")


def forward_flops(config: Config, n_new: int, n_past: int = 0, *, mask: str | None = None,
                  prefix_len: int | None = None, logits: str = "all", batch: int = 1) -> dict[str, int]:
    """FLOPs of one forward call that runs ``n_new`` tokens after ``n_past`` cached ones.

    Returns ``linear`` (the blocks' matrices), ``attention`` (q.k and the weighted values over the visible
    pairs), ``head`` (the LM head, on every new position with logits="all" as anatomy models compute it,
    or only the last with "last") and ``total``. ``mask`` defaults to ``config.mask``.
    """
    c = _check_config(config)
    _check_count("n_new", n_new, 1)
    _check_count("n_past", n_past, 0)
    _check_count("batch", batch, 1)
    if logits not in ("all", "last", "none"):
        raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
    mask = mask or c.mask
    pairs = visible_pairs(mask, n_new, n_past + n_new, prefix_len)
    linear = 2 * n_new * c.n_layers * linear_params(c)
    attention = 4 * c.n_layers * c.n_heads * c.head_dim * pairs
    head_positions = {"all": n_new, "last": 1, "none": 0}[logits] if c.lm_head else 0
    head = 2 * head_positions * c.d_model * c.vocab_size
    out = {"linear": linear, "attention": attention, "head": head}
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def encdec_first_token_flops(config: Config, n_source: int,
                             n_decoder_layers: int | None = None) -> dict[str, int]:
    """FLOPs for an encoder-decoder's first output token: encode the source, project every decoder layer's
    cross-attention keys and values, run one decoder token (self-attention to itself, cross-attention to
    the source) and the LM head once. ``config`` is the encoder's; the decoder has the same shape."""
    c = _check_config(config)
    _check_count("n_source", n_source, 1)
    L_dec = n_decoder_layers or c.n_layers
    enc = forward_flops(replace(c, lm_head=False), n_source, mask="bidirectional", logits="none")
    kv_width = c.n_kv_heads * c.head_dim
    cross_kv = 2 * n_source * L_dec * 2 * c.d_model * kv_width
    dec_linear = 2 * L_dec * (linear_params(c, cross_attention=True) - 2 * c.d_model * kv_width)
    dec_attention = 4 * L_dec * c.n_heads * c.head_dim * (1 + n_source)
    head = 2 * c.d_model * c.vocab_size
    out = {"encoder": enc["total"], "cross_kv": cross_kv, "decoder": dec_linear + dec_attention, "head": head}
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------------------
# Bytes, arithmetic intensity, roofline
# ---------------------------------------------------------------------------------------------------------

def kv_bytes_per_token(config: Config, bytes_per_elem: int = 2) -> int:
    """KV-cache bytes per token: 2 (K and V) * layers * n_kv_heads * head_dim * bytes per element."""
    c = _check_config(config)
    return kv_cache_bytes(c.n_layers, c.n_kv_heads, c.head_dim, 1, bytes_per_elem)


def seed002_kv_bytes_per_token(n_layers: int, d_model: int, bytes_per_elem: int = 2) -> int:
    """Seed 002's formula, 2 x layers x 2 x d_model x bytes: the full model width for K and V, and a
    second factor 2 (its comment calls the first 2 "K and V" and the second "bytes", then multiplies by
    the bytes per element again)."""
    n_layers = _check_count("n_layers", n_layers, 1)
    d_model = _check_count("d_model", d_model, 1)
    return 2 * n_layers * 2 * d_model * bytes_per_elem


# Seed 002's stated KV-cache size for Llama-3-70B: "5.24 MB per token" (fp16), from its formula
# 2 x layers x 2 x d_model x bytes with 80 layers and d_model = 8192. A number the seed states, kept here to
# check that seed002_kv_bytes_per_token reproduces the seed's own arithmetic.
SEED002_LLAMA70B_KV_PER_TOKEN = 5.24e6


def transformers_kv_cache(config: Config, input_ids: torch.Tensor, *, n_kv_heads: int | None = None,
                          dtype: torch.dtype = torch.float32) -> dict:
    """The KV cache that transformers itself builds for ``input_ids`` (1, N) with a decoder of ``config``'s
    shape: an independent measurement of what a cache holds, for :func:`kv_bytes_per_token` to be checked
    against.

    The model is transformers' own ``LlamaForCausalLM`` (or Qwen2) built from ``config`` by
    :func:`anatomy.pretrained.hf_config_from` and run with ``use_cache=True`` on PyTorch's ``meta`` device:
    tensors with shapes and dtypes but no data, so building and running a 135M-parameter model costs almost
    nothing, and a cache's bytes depend on its tensors' shapes and dtype only. ``n_kv_heads`` overrides the
    number of key/value heads (e.g. ``config.n_heads`` for the model's MHA twin). Returns ``nbytes`` (summed
    over every tensor the cache holds), ``n_tensors``, ``shape`` (of one cached tensor, as transformers lays
    it out), ``cache_len`` and ``cache_class``.
    """
    import transformers  # noqa: F401 (an error here names the missing package)

    from anatomy.pretrained import hf_config_from

    c = _check_config(config)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be a (1, N) tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    if n_kv_heads is not None:
        c = replace(c, n_kv_heads=_check_count("n_kv_heads", n_kv_heads, 1))
    if c.mask != "causal" or not c.lm_head:
        raise ValueError("config must describe a decoder with an LM head (mask='causal', lm_head=True)")
    hf_config = hf_config_from(c)
    import transformers as tf

    cls = tf.Qwen2ForCausalLM if isinstance(hf_config, tf.Qwen2Config) else tf.LlamaForCausalLM
    with torch.device("meta"), torch.inference_mode():
        hf = cls(hf_config).to(dtype).eval()
        out = hf(input_ids=input_ids.to("meta"), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return {"nbytes": sum(t.nbytes for t in tensors), "n_tensors": len(tensors),
            "shape": tuple(tensors[0].shape), "cache_len": int(cache.get_seq_length()),
            "cache_class": type(cache).__name__}


def kv_table(names: Sequence[str] = PUBLISHED, n_tokens: int = 8192, bytes_per_elem: int = 2) -> list[dict]:
    """One row per published model: attention kind, heads, KV bytes per token and at ``n_tokens``, the
    same model if it had full multi-head K/V, and seed 002's formula."""
    rows = []
    for name in names:
        c = published_config(name)
        per = kv_bytes_per_token(c, bytes_per_elem)
        mha = kv_bytes_per_token(replace(c, n_kv_heads=c.n_heads), bytes_per_elem)
        seed = seed002_kv_bytes_per_token(c.n_layers, c.d_model, bytes_per_elem)
        rows.append({"model": name, "kind": attention_kind(c), "layers": c.n_layers, "q_heads": c.n_heads,
                     "kv_heads": c.n_kv_heads, "head_dim": c.head_dim, "per_token": per,
                     "total": per * n_tokens, "mha_per_token": mha, "seed002_per_token": seed,
                     "seed002_over_ours": seed / per})
    return rows


def step_bytes(config: Config, n_new: int, n_past: int = 0, *, batch: int = 1, weight_bytes: int = 4,
               kv_bytes: int = 4, logits: str = "all") -> dict[str, int]:
    """Minimum memory traffic of one forward call: weights once, the cache read once, new K/V written once.

    Weights are the blocks' matrices plus the LM head matrix (tied or not, it is read), not the embedding
    table (only ``n_new`` rows of it are touched, counted with the activations as negligible).
    """
    c = _check_config(config)
    _check_count("n_new", n_new, 1)
    _check_count("n_past", n_past, 0)
    _check_count("batch", batch, 1)
    head = c.vocab_size * c.d_model if (c.lm_head and logits != "none") else 0
    weights = (c.n_layers * linear_params(c) + head) * weight_bytes
    per_token = kv_bytes_per_token(c, kv_bytes)
    out = {"weights": weights, "kv_read": batch * n_past * per_token, "kv_write": batch * n_new * per_token}
    out["total"] = sum(out.values())
    return out


def decode_bytes(config: Config, context: int, **kw) -> int:
    """Bytes one decode step moves (one new token after ``context`` cached ones)."""
    return step_bytes(config, 1, context, **kw)["total"]


def step_intensity(config: Config, n_new: int, n_past: int = 0, *, batch: int = 1, weight_bytes: int = 4,
                   kv_bytes: int = 4, logits: str = "all") -> float:
    """Arithmetic intensity (FLOPs per byte) of one forward call of ``batch`` sequences."""
    f = forward_flops(config, n_new, n_past, logits=logits, batch=batch)["total"]
    b = step_bytes(config, n_new, n_past, batch=batch, weight_bytes=weight_bytes, kv_bytes=kv_bytes,
                   logits=logits)["total"]
    return f / b


def roofline(intensity, peak_flops: float, bandwidth: float):
    """Attainable FLOP/s at an arithmetic intensity (FLOP/byte): min(peak, intensity * bandwidth)."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"peak_flops and bandwidth must be > 0, got {peak_flops}, {bandwidth}")
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
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"peak_flops and bandwidth must be > 0, got {peak_flops}, {bandwidth}")
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
    if params_billion <= 0:
        raise ValueError(f"params_billion must be > 0, got {params_billion}")
    _check_count("seq_len", seq_len, 1)
    _check_count("gen_len", gen_len, 0)
    P = params_billion * 1e9
    d_model = int((P / 12) ** 0.5) * 2
    n_layers = int(P / (12 * d_model * d_model))
    prefill_ms = 2 * P * seq_len / A100.peak_flops * 1e3
    kv_per_token = 2 * n_layers * 2 * d_model * 2
    decode_step_ms = kv_per_token * (seq_len + gen_len) / A100.bandwidth * 1e3
    return {"d_model": d_model, "n_layers": n_layers, "prefill_ms": prefill_ms,
            "decode_step_ms": decode_step_ms, "decode_ms": decode_step_ms * gen_len,
            "total_ms": prefill_ms + decode_step_ms * gen_len}


def latency_estimate(config: Config, seq_len: int, gen_len: int, hardware: Hardware = A100, *,
                     weight_bytes: int = 2, kv_bytes: int = 2, batch: int = 1) -> dict[str, float]:
    """Roofline latency of prefill (seq_len tokens) and of gen_len decode steps at 100 % of the hardware.

    Each call takes max(FLOPs / peak, bytes / bandwidth): a lower bound that a real system approaches but
    never reaches. Decode steps read every weight and the whole cache; the cache grows step by step.
    """
    c = _check_config(config)
    _check_count("seq_len", seq_len, 1)
    _check_count("gen_len", gen_len, 0)
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
    return {"prefill_ms": prefill * 1e3, "decode_ms": decode * 1e3, "total_ms": (prefill + decode) * 1e3,
            "decode_weights_ms": weights_only * 1e3,
            "weights_gb": (c.n_layers * linear_params(c) + c.vocab_size * c.d_model) * weight_bytes / 1e9}


# ---------------------------------------------------------------------------------------------------------
# Measuring this machine
# ---------------------------------------------------------------------------------------------------------

def measure_matmul_flops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict:
    """Achievable FLOP/s: time an (n x n) @ (n x n) matmul (2 n^3 FLOPs). Returns median, best, samples."""
    _check_count("n", n, 16)
    _check_count("repeats", repeats, 1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    matmul = {"matmul": lambda: torch.matmul(a, b, out=out)}
    times = interleaved_times(matmul, repeats, threads=None)["matmul"]
    flops = 2 * n**3
    return {"flops": flops, "seconds": times, "median": flops / statistics.median(times),
            "best": flops / min(times)}


def measure_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> dict:
    """Achievable memory bandwidth: time a copy of an ``nbytes`` float32 buffer into another (read + write
    = 2 * nbytes of traffic). Use a buffer far larger than the CPU caches. Returns median, best, samples."""
    _check_count("nbytes", nbytes, 2**20)
    _check_count("repeats", repeats, 1)
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    times = interleaved_times({"copy": lambda: dst.copy_(src)}, repeats, threads=None)["copy"]
    moved = 2 * src.numel() * 4
    return {"bytes": moved, "seconds": times, "median": moved / statistics.median(times),
            "best": moved / min(times)}


@torch.inference_mode()
def chunk_sweep(model: Transformer, context_ids: torch.Tensor, new_ids: torch.Tensor,
                chunks: Sequence[int] = (1, 4, 16, 64, 256), repeats: int = 3) -> dict:
    """Time one forward call that runs n new tokens on a cache of ``context_ids`` (1, P), for each n in
    ``chunks`` (interleaved, median of ``repeats``). n = 1 is a decode step; large n is a prefill. As in
    generation, only the last position goes through the LM head (``logits_to_keep=1``).

    new_ids (1, >= max(chunks)) supplies the tokens. Returns per chunk: ``seconds`` (median per call),
    ``per_token`` (seconds per token), ``flops`` and ``bytes`` (counted, fp32 weights and cache) and
    ``intensity`` (FLOP/byte), ``achieved`` (FLOP/s); and ``cache_len``, ``cache_nbytes`` of the context's
    cache (a real cache, to check the size formula against).
    """
    if not chunks or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in chunks):
        raise ValueError(f"chunks must be positive ints, got {chunks!r}")
    if new_ids.shape[1] < max(chunks):
        raise ValueError(f"new_ids has {new_ids.shape[1]} tokens, fewer than the largest chunk {max(chunks)}")
    model.eval()
    P = context_ids.shape[1]
    cache = model.new_cache(max_len=P + max(chunks))
    model(context_ids, cache=cache)

    def run(n: int):
        def fn():
            cache.truncate(P)
            model(new_ids[:, :n], cache=cache, logits_to_keep=1)
        return fn

    times = interleaved_times({n: run(n) for n in chunks}, repeats=repeats, threads=None)
    cache.truncate(P)
    out: dict = {"chunk": list(chunks), "seconds": [], "per_token": [], "flops": [], "bytes": [],
                 "intensity": [], "achieved": [], "cache_len": len(cache), "cache_nbytes": cache.nbytes}
    for n in chunks:
        sec = statistics.median(times[n])
        f = forward_flops(model.config, n, P, logits="last")["total"]
        b = step_bytes(model.config, n, P)["total"]
        for key, value in (("seconds", sec), ("per_token", sec / n), ("flops", f), ("bytes", b),
                           ("intensity", f / b), ("achieved", f / sec)):
            out[key].append(value)
    return out


@torch.inference_mode()
def batch_decode_sweep(model: Transformer, context_ids: torch.Tensor, batches: Sequence[int] = (1, 4, 16),
                       repeats: int = 3) -> dict:
    """Time one decode step for B sequences at once (each with the context ``context_ids`` (1, P + 1) cached
    up to its last token, which is the token decoded), for each B in ``batches``. The weights are read once
    per step whatever B is, so the arithmetic intensity grows with B. Returns per B: ``seconds`` (median),
    ``flops``, ``bytes`` (fp32, counted), ``intensity`` and ``achieved`` FLOP/s."""
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batches must be positive ints, got {batches!r}")
    if context_ids.dim() != 2 or context_ids.shape[1] < 2:
        raise ValueError(f"context_ids must be (1, P + 1) with P >= 1, got {tuple(context_ids.shape)}")
    model.eval()
    P = context_ids.shape[1] - 1
    fns = {}
    for B in batches:
        cache = model.new_cache(batch_size=B, max_len=P + 1)
        model(context_ids[:, :P].expand(B, P), cache=cache)
        last = context_ids[:, P:].expand(B, 1)

        def step(cache=cache, last=last):
            cache.truncate(P)
            model(last, cache=cache)

        fns[B] = step
    times = interleaved_times(fns, repeats=repeats, threads=None)
    out: dict = {"batch": list(batches), "seconds": [], "flops": [], "bytes": [], "intensity": [],
                 "achieved": []}
    for B in batches:
        sec = statistics.median(times[B])
        f = forward_flops(model.config, 1, P, batch=B)["total"]
        b = step_bytes(model.config, 1, P, batch=B)["total"]
        for key, value in (("seconds", sec), ("flops", f), ("bytes", b), ("intensity", f / b),
                           ("achieved", f / sec)):
            out[key].append(value)
    return out


# ---------------------------------------------------------------------------------------------------------
# The encoder's niche: classifying sentences with an encoder or by prompting a decoder
# ---------------------------------------------------------------------------------------------------------

# A small labelled set written for this book: four topics, two labelled examples each (for prototypes) and
# eight test sentences each. Small on purpose: one test sentence is 1/32 of the accuracy.
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "Sports": {
        "examples": ("The team scored twice in the second half to win the championship.",
                     "She won the gold medal in the hundred-metre sprint."),
        "test": ("The striker curled the ball into the top corner in the last minute of extra time.",
                 "She finished the marathon in under three hours despite the heat.",
                 "The home team lost the final after a controversial penalty.",
                 "He has been training six days a week to qualify for the national swimming championship.",
                 "Our coach switched to a zone defence in the second half and we won by twelve points.",
                 "The tennis match went to a fifth set and lasted almost five hours.",
                 "After the injury, the goalkeeper missed the rest of the season.",
                 "The cyclists climbed the mountain pass in thick fog during the third stage of the race."),
    },
    "Food": {
        "examples": ("Mix the flour, butter and sugar, then bake the cake for forty minutes.",
                     "The soup was seasoned with fresh herbs and black pepper."),
        "test": ("Let the dough rest for an hour before you roll it out and cut the noodles.",
                 "This curry gets its warmth from ginger, cumin and a little chili.",
                 "The bakery on the corner sells the best sourdough bread in town.",
                 "Roast the vegetables with olive oil and garlic until the edges turn brown.",
                 "For dessert we had a lemon tart with fresh raspberries.",
                 "Simmer the soup slowly so the beans become soft and creamy.",
                 "He always adds too much salt to the pasta water.",
                 "The restaurant's tasting menu had seven small courses, each paired with a wine."),
    },
    "Weather": {
        "examples": ("Tomorrow will be cloudy with a chance of showers in the afternoon.",
                     "Strong winds and freezing temperatures are forecast for the coast."),
        "test": ("Heavy rain is expected tonight, with winds of up to eighty kilometres per hour.",
                 "The morning fog should lift by noon, leaving clear skies for the afternoon.",
                 "A heat wave will push temperatures above thirty-five degrees this weekend.",
                 "Snow is likely in the mountains, so drivers should carry chains.",
                 "After weeks of drought, the first thunderstorm finally brought some relief.",
                 "Forecasters warn that the hurricane could make landfall on Thursday.",
                 "It was so humid that the windows were covered in condensation all day.",
                 "Frost overnight may damage early blossoms in the orchards."),
    },
    "Technology": {
        "examples": ("The software update fixes several security bugs in the browser.",
                     "This computer has sixteen gigabytes of memory and a fast graphics card."),
        "test": ("The new phone has a faster processor and a battery that lasts two days.",
                 "Remember to back up your files before you install the operating system update.",
                 "The company released an open-source library for training neural networks.",
                 "My laptop keeps disconnecting from the wireless network after it wakes from sleep.",
                 "Engineers cut the chip's power consumption by moving to a smaller manufacturing process.",
                 "The website crashed because the database could not handle so many requests.",
                 "She wrote a script that renames thousands of photos automatically.",
                 "The satellite internet service now offers lower latency for rural users."),
    },
}


def topic_dataset() -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """(test sentences, their label indices, example sentences, their label indices, label names)."""
    labels = list(TOPICS)
    test, y, examples, ey = [], [], [], []
    for i, name in enumerate(labels):
        test += TOPICS[name]["test"]
        y += [i] * len(TOPICS[name]["test"])
        examples += TOPICS[name]["examples"]
        ey += [i] * len(TOPICS[name]["examples"])
    return test, y, examples, ey, labels


@torch.inference_mode()
def sentence_embeddings(encoder: Transformer, tokenizer, sentences: Sequence[str]) -> torch.Tensor:
    """Sentence-BERT embeddings (Reimers & Gurevych 2019): the encoder's last hidden states averaged over
    the real tokens of each sentence, L2-normalised. One padded batch. -> (N, d)"""
    if not sentences:
        raise ValueError("sentences must not be empty")
    enc = tokenizer(list(sentences), padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    hidden = encoder.eval()(enc["input_ids"], attention_mask=mask, token_type_ids=enc.get("token_type_ids"))
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(mean, dim=-1)


def nearest_prototype(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar prototype (C, d) for each embedding (N, d). -> (N,)"""
    if embeddings.dim() != 2 or prototypes.dim() != 2 or embeddings.shape[1] != prototypes.shape[1]:
        raise ValueError(f"need (N, d) embeddings and (C, d) prototypes, got {tuple(embeddings.shape)} and "
                         f"{tuple(prototypes.shape)}")
    e = torch.nn.functional.normalize(embeddings, dim=-1)
    p = torch.nn.functional.normalize(prototypes, dim=-1)
    return (e @ p.T).argmax(-1)


def label_prompts(tokenizer, sentences: Sequence[str], labels: Sequence[str],
                  style: str = "chat") -> list[list[int]]:
    """Prompts asking a decoder for the topic of each sentence, ending where its answer would start.

    style "chat": one user message in the tokenizer's chat template, then the assistant header.
    style "plain": the text ``Sentence: ...`` and ``Topic (A, B, C or D):``, no template.
    """
    if style not in ("chat", "plain"):
        raise ValueError(f"style must be 'chat' or 'plain', got {style!r}")
    options = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    out = []
    for s in sentences:
        if style == "chat":
            msg = [{"role": "user", "content": f"Which topic is this sentence about: {options}? Answer with "
                                               f"one word.\n\nSentence: {s}"}]
            text = tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
        else:
            text = f"Sentence: {s}\nTopic ({options}):"
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _label_ids(tokenizer, labels: Sequence[str], space: bool) -> list[int]:
    pad = " " if space else ""
    ids = [tokenizer(pad + name, add_special_tokens=False)["input_ids"][0] for name in labels]
    if len(set(ids)) != len(labels):
        raise ValueError(f"the labels {list(labels)} do not start with distinct tokens")
    return ids


@torch.inference_mode()
def prompt_classify(decoder: Transformer, tokenizer, sentences: Sequence[str], labels: Sequence[str],
                    style: str = "chat") -> dict:
    """Zero-shot classification by prompting: the label whose first token the decoder finds most likely
    where its answer starts. One right-padded batch: with a causal mask the padding after a prompt cannot
    affect it, and the LM head runs only at each prompt's last token (as a classifier would).

    Returns ``pred`` (N,), ``scores`` (N, C) logits of the label tokens and ``lengths`` (prompt tokens).
    """
    label_ids = _label_ids(tokenizer, labels, space=style == "plain")
    prompts = label_prompts(tokenizer, sentences, labels, style)
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    body = with_mask(decoder, decoder.config.mask, lm_head=False).eval()
    hidden = body(ids)[torch.arange(len(prompts)), lengths - 1]  # (N, d), final-normed
    scores = decoder.lm_head(hidden)[:, label_ids]
    return {"pred": scores.argmax(-1), "scores": scores, "lengths": lengths.tolist()}


@torch.inference_mode()
def fewshot_classify(decoder: Transformer, tokenizer, sentences: Sequence[str], labels: Sequence[str],
                     examples: Sequence[str], example_labels: Sequence[int]) -> dict:
    """Few-shot classification by prompting, with the shared prefix cached once (chapter 9's trick).

    The prompt is the labelled examples as ``Sentence: ...`` / ``Topic: <label>`` pairs, then the sentence
    and ``Topic:``. The examples' KV cache is computed once; each sentence runs only its own tokens on it.
    Returns ``pred`` (N,), ``scores`` (N, C), ``prefix_len`` and ``lengths`` (tokens run per sentence).
    """
    if len(examples) != len(example_labels):
        raise ValueError("examples and example_labels must have the same length")
    label_ids = _label_ids(tokenizer, labels, space=True)
    shots = "".join(f"Sentence: {e}\nTopic: {labels[k]}\n\n" for e, k in zip(examples, example_labels))
    prefix = torch.tensor([tokenizer(shots, add_special_tokens=False)["input_ids"]])
    suffixes = [tokenizer(f"Sentence: {s}\nTopic:", add_special_tokens=False)["input_ids"] for s in sentences]
    cache = decoder.eval().new_cache(max_len=prefix.shape[1] + max(len(x) for x in suffixes))
    decoder(prefix, cache=cache)
    body = with_mask(decoder, decoder.config.mask, lm_head=False)
    scores = []
    for suffix in suffixes:
        cache.truncate(prefix.shape[1])
        hidden = body(torch.tensor([suffix]), cache=cache)[0, -1]
        scores.append(decoder.lm_head(hidden)[label_ids])
    scores = torch.stack(scores)
    return {"pred": scores.argmax(-1), "scores": scores, "prefix_len": prefix.shape[1],
            "lengths": [len(x) for x in suffixes]}


CLASSIFIERS = (
    "MiniLM, prototypes from examples",
    "MiniLM, prototypes from label names",
    "SmolLM2 prompted, zero-shot (chat)",
    "SmolLM2 prompted, zero-shot (plain)",
    "SmolLM2 prompted, few-shot (cached examples)",
    "SmolLM2 as an encoder, prototypes from examples",
)


@torch.inference_mode()
def compare_classifiers(encoder: Transformer, encoder_tokenizer, decoder: Transformer,
                        decoder_tokenizer, *, encoder_repeats: int = 5, clock: str = "cpu") -> dict:
    """Classify :data:`TOPICS`'s test sentences six ways (``CLASSIFIERS``) with an encoder (MiniLM) and a
    decoder (SmolLM2); time each way once, interleaved, after an untimed warm-up call of each model. The
    encoder's ways take milliseconds, so a single descheduling by another job could multiply their time:
    they are timed ``encoder_repeats`` times in all (interleaved with each other) and their median is
    reported. The decoder's ways take seconds, which averages such interruptions out. ``clock="cpu"``
    (default) times every way on one thread by that thread's CPU time, so other jobs on the machine do not
    enter the ratios; ``clock="wall"`` uses elapsed time with torch's current threads.

    Returns name -> ``accuracy``, ``pred`` (N,), ``seconds`` and ``flops`` per sentence (counted: the tokens
    each way runs through the model that runs them; prototypes and the few-shot examples' cache are
    one-time costs, included in the measured time and left out of the counted FLOPs), ``tokens`` per
    sentence; and ``labels``, ``n_test``.
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f'clock must be "cpu" or "wall", got {clock!r}')
    test, y, examples, ey, labels = topic_dataset()
    y_t, ey_t = torch.tensor(y), torch.tensor(ey)
    body = with_mask(decoder, decoder.config.mask, lm_head=False)

    def by_examples(model, tok):
        e, p = sentence_embeddings(model, tok, test), sentence_embeddings(model, tok, examples)
        return nearest_prototype(e, torch.stack([p[ey_t == k].mean(0) for k in range(len(labels))]))

    def by_names():
        names = [f"This sentence is about {name.lower()}." for name in labels]
        e = sentence_embeddings(encoder, encoder_tokenizer, test)
        return nearest_prototype(e, sentence_embeddings(encoder, encoder_tokenizer, names))

    ways = {
        CLASSIFIERS[0]: lambda: by_examples(encoder, encoder_tokenizer),
        CLASSIFIERS[1]: by_names,
        CLASSIFIERS[2]: lambda: prompt_classify(decoder, decoder_tokenizer, test, labels, "chat")["pred"],
        CLASSIFIERS[3]: lambda: prompt_classify(decoder, decoder_tokenizer, test, labels, "plain")["pred"],
        CLASSIFIERS[4]: lambda: fewshot_classify(decoder, decoder_tokenizer, test, labels, examples,
                                                 ey)["pred"],
        CLASSIFIERS[5]: lambda: by_examples(body, decoder_tokenizer),
    }
    sentence_embeddings(encoder, encoder_tokenizer, examples[:2])  # first calls build fused weights: untimed
    sentence_embeddings(body, decoder_tokenizer, examples[:2])
    preds: dict[str, torch.Tensor] = {}

    def timed(name):
        def run():
            preds[name] = ways[name]()
        return run

    _check_count("encoder_repeats", encoder_repeats, 1)
    timing = dict(threads=1, clock="cpu") if clock == "cpu" else dict(threads=None)
    times = interleaved_times({k: timed(k) for k in ways}, repeats=1, warmup=0, **timing)
    if encoder_repeats > 1:
        again = interleaved_times({k: timed(k) for k in CLASSIFIERS[:2]}, repeats=encoder_repeats - 1,
                                  warmup=0, **timing)
        for k, extra in again.items():
            times[k] = [statistics.median(times[k] + extra)]
    enc_cfg, dec_cfg = encoder.config, decoder.config
    mini = [len(t) for t in encoder_tokenizer(test)["input_ids"]]
    bare = [len(decoder_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in test]
    chat = [len(p) for p in label_prompts(decoder_tokenizer, test, labels, "chat")]
    plain = [len(p) for p in label_prompts(decoder_tokenizer, test, labels, "plain")]
    few = fewshot_classify(decoder, decoder_tokenizer, test[:1], labels, examples, ey)
    shots = few["prefix_len"]
    few_lens = [len(decoder_tokenizer(f"Sentence: {t}\nTopic:", add_special_tokens=False)["input_ids"])
                for t in test]

    def mean_flops(cfg, lengths, past=0, logits="last"):
        return statistics.mean(forward_flops(cfg, n, past, logits=logits)["total"] for n in lengths)

    counted = {
        CLASSIFIERS[0]: (mini, mean_flops(enc_cfg, mini, logits="none")),
        CLASSIFIERS[1]: (mini, mean_flops(enc_cfg, mini, logits="none")),
        CLASSIFIERS[2]: (chat, mean_flops(dec_cfg, chat)),
        CLASSIFIERS[3]: (plain, mean_flops(dec_cfg, plain)),
        CLASSIFIERS[4]: (few_lens, mean_flops(dec_cfg, few_lens, shots)),
        CLASSIFIERS[5]: (bare, mean_flops(dec_cfg, bare, logits="none")),
    }
    out: dict = {"labels": labels, "n_test": len(test)}
    for name in ways:
        lengths, flops = counted[name]
        out[name] = {"pred": preds[name], "accuracy": float((preds[name] == y_t).double().mean()),
                     "seconds": times[name][0] / len(test), "flops": flops,
                     "tokens": statistics.mean(lengths)}
    return out


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table (for ``IPython.display.HTML``; the built book renders HTML outputs, while Markdown
    outputs there are CommonMark, which has no tables). Cells are str()-ed and escaped: format them first."""
    import html as _html

    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row must have as many cells as the header")
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{_html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{_html.escape(str(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return (f"<table style='border-collapse:collapse;font-size:0.9em;margin:0.5em 0'><thead><tr>{head}"
            f"</tr></thead><tbody>{body}</tbody></table>")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (for ``IPython.display.Markdown``); cells are str()-ed, so format them first."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row must have as many cells as the header")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Multi-turn dialogue: the conversation and time to first token per turn
# ---------------------------------------------------------------------------------------------------------

# A five-turn conversation (user message, assistant reply), written for this book. The replies are fixed
# text, fed to the model as if it had generated them, so every run processes the same tokens.
DIALOGUE: tuple[tuple[str, str], ...] = (
    ("I want to start a small vegetable garden on my balcony. It gets about five hours of direct sun in "
     "the afternoon. Which vegetables would you suggest for a beginner, and how big should the pots be?",
     "Five hours of afternoon sun is enough for many easy crops. Good choices for a beginner are cherry "
     "tomatoes, lettuce, radishes, spinach, bush beans and herbs such as basil, parsley and chives. "
     "Tomatoes need the largest pots, at least twenty litres each; beans and spinach are happy in ten "
     "litres, and herbs or radishes in pots of three to five litres."),
    ("That sounds good. What kind of soil should I buy? The garden centre near me sells bags of potting "
     "mix, compost and something called topsoil, and I am not sure which of these is meant for pots.",
     "Use potting mix for containers. It is light, holds water without becoming soggy and lets air reach "
     "the roots. Topsoil is meant for garden beds: in a pot it packs down, drains badly and gets heavy. "
     "You can mix in some compost, about one part compost to four parts potting mix, to add nutrients, "
     "but do not fill the pots with compost alone."),
    ("How often will I need to water everything? I travel for work about two days a week, so I am "
     "worried that the plants will dry out while I am away, especially in the middle of summer.",
     "Containers dry out much faster than beds, so in summer most plants need water every day, and "
     "tomatoes in hot weather sometimes twice. For your trips, water deeply the evening before you leave, "
     "group the pots together in partial shade, and consider self-watering pots or simple drip spikes "
     "connected to a bottle. A layer of mulch on the soil also slows evaporation noticeably."),
    ("My neighbour says I should add fertiliser every week, but another website says fertiliser burns "
     "the roots. Who is right, and what would you recommend for tomatoes and herbs in particular?",
     "Both have a point. Potting mix runs out of nutrients after a few weeks, so regular feeding helps, "
     "but too much fertiliser, or a strong dose on dry soil, can damage roots. For tomatoes, use a liquid "
     "tomato feed at half strength every week once the first flowers appear. Herbs need very little: a "
     "light feed once a month keeps the flavour stronger than frequent feeding does."),
    ("Last question for today: some leaves on my basil have small holes and there are tiny green insects "
     "under the leaves. Is that dangerous for the other plants, and how can I get rid of them safely?",
     "Tiny green insects under the leaves are most likely aphids, and the holes may come from slugs or "
     "caterpillars. Aphids spread easily to nearby plants, so act early: spray them off with a strong jet "
     "of water, wipe the leaves, or use a mild soap spray every few days. Check the undersides of the "
     "leaves regularly, and pick off any caterpillars by hand in the evening."),
)


def chat_segments(tokenizer, dialogue: Sequence[tuple[str, str]] = DIALOGUE) -> list[dict[str, torch.Tensor]]:
    """Token ids of a chat, turn by turn, with the tokenizer's chat template.

    Returns one dict per turn: ``prompt`` (1, m) = the tokens a turn adds before the model can answer
    (the end of the previous reply's markup, the user message, the assistant header) and ``reply`` (1, r).
    Concatenating all segments gives exactly the template's rendering of the whole conversation (checked).
    """
    if not dialogue:
        raise ValueError("dialogue must hold at least one (user, assistant) turn")
    messages: list[dict[str, str]] = []
    segments, done = [], []

    def ids_of(msgs, gen: bool) -> list[int]:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for user, assistant in dialogue:
        messages.append({"role": "user", "content": user})
        prompt_ids = ids_of(messages, True)
        messages.append({"role": "assistant", "content": assistant})
        full_ids = ids_of(messages, False)
        if prompt_ids[: len(done)] != done or full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template does not render the turns as a growing prefix")
        segments.append({"prompt": torch.tensor([prompt_ids[len(done):]]),
                         "reply": torch.tensor([full_ids[len(prompt_ids):]])})
        done = full_ids
    return segments


def with_mask(model: Transformer, mask: str, *, lm_head: bool = True) -> Transformer:
    """The same network with another attention mask: a new Transformer that shares every module (and so
    every weight, without a copy) with ``model``. SmolLM2 with mask="prefix" is a prefix LM of its shape;
    with mask="bidirectional" and lm_head=False, an encoder of its shape that returns hidden states."""
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    cfg = replace(model.config, mask=mask, lm_head=lm_head and model.config.lm_head)
    with torch.device("meta"):
        twin = Transformer(cfg)
    for name, child in model.named_children():
        if name != "lm_head" or cfg.lm_head:
            setattr(twin, name, child)
    for name, value in vars(model).items():  # plain attributes (e.g. a RoPE table)
        if not name.startswith("_") and name not in ("config", "training"):
            setattr(twin, name, value)
    twin.config = cfg
    return twin.train(model.training)


def encoder_decoder_like(model: Transformer, seed: int = 0) -> EncoderDecoder:
    """An encoder-decoder of ``model``'s shape (T5's convention: as many encoder layers as decoder layers),
    built around ``model``'s own modules: the encoder is ``model`` with a bidirectional mask, and decoder
    block i reuses block i's norms, self-attention and MLP. Only the cross-attention (and its norm) is new,
    initialised at random from ``seed``. A model for timing and counting, not for text: it was never trained.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    c = model.config
    with torch.device("meta"):
        ed = EncoderDecoder(replace(c, mask="causal"))
    ed.encoder = with_mask(model, "bidirectional", lm_head=False)
    ed.embed_tokens = model.embed_tokens
    for name in ("norm", "lm_head", "embed_positions"):
        if hasattr(model, name):
            setattr(ed, name, getattr(model, name))
    g = torch.Generator().manual_seed(seed)
    device = model.embed_tokens.weight.device
    dtype = model.embed_tokens.weight.dtype
    for block, src in zip(ed.layers, model.layers):
        for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            setattr(block, name, getattr(src, name))
        block.cross_attn_layernorm = _fresh_norm(src.input_layernorm)
        block.cross_attn.to_empty(device=device)
        block.cross_attn.to(dtype)
        for lin in (block.cross_attn.q_proj, block.cross_attn.k_proj, block.cross_attn.v_proj,
                    block.cross_attn.o_proj):
            with torch.no_grad():
                lin.weight.normal_(0.0, c.init_std, generator=g)
                if lin.bias is not None:
                    lin.bias.zero_()
    return ed.eval()


def _fresh_norm(norm: nn.Module) -> nn.Module:
    """A new norm like ``norm`` (same class and size), with unit gain and zero bias."""
    import copy

    fresh = copy.deepcopy(norm)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            param.fill_(1.0 if name == "weight" else 0.0)
    return fresh


def _time(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _check_segments(segments) -> None:
    if not segments or not all(isinstance(s, Mapping) and {"prompt", "reply"} <= set(s) for s in segments):
        raise ValueError("segments must be a non-empty list of {'prompt', 'reply'} dicts (see chat_segments)")


@torch.inference_mode()
def dialogue_ttft(segments: Sequence[Mapping[str, torch.Tensor]], decoder: Transformer, *,
                  prefix_lm: Transformer | None = None, encdec: EncoderDecoder | None = None,
                  start_id: int = 0, repeats: int = 1, final_repeats: int = 5) -> dict:
    """Time to first token at every turn of a chat, for up to four ways of serving it.

    * ``reuse``: the decoder keeps its KV cache across turns and runs only the new prompt tokens.
    * ``recompute``: the decoder re-encodes the whole conversation each turn (a fresh cache).
    * ``prefix``: a prefix LM whose bidirectional prefix is the conversation so far; the prefix grows every
      turn, so its states must all be recomputed.
    * ``encdec``: an encoder-decoder that encodes the conversation so far and starts its reply with
      ``start_id``.

    Each call computes logits only at the last position (``logits_to_keep=1``), as a server does.
    Every turn times each strategy ``repeats`` times; the last turn times reuse and recompute
    ``final_repeats`` times, interleaved (reuse, recompute, reuse, ...) so that background load hits both
    alike. After the timing the reply is appended to the reuse cache, untimed, as generating it would.
    Returns ``history`` (tokens before each turn's prompt), ``new`` (prompt tokens), ``times`` (strategy ->
    per turn list of seconds), ``ttft`` (strategy -> per turn median), ``logit_err`` (per turn max |reuse -
    recompute| over the first-token logits) and ``cache_nbytes``, ``cache_len`` (the reuse cache at the end).
    """
    _check_segments(segments)
    _check_count("repeats", repeats, 1)
    _check_count("final_repeats", final_repeats, 1)
    strategies = ["reuse", "recompute"] + (["prefix"] if prefix_lm is not None else []) + (
        ["encdec"] if encdec is not None else [])
    for model in (decoder, prefix_lm, encdec):
        if model is not None:
            model.eval()
    total = sum(s["prompt"].shape[1] + s["reply"].shape[1] for s in segments)
    cache = decoder.new_cache(max_len=total)
    history = torch.empty(1, 0, dtype=torch.long)
    out = {"history": [], "new": [], "times": {k: [] for k in strategies},
           "ttft": {k: [] for k in strategies}, "logit_err": []}
    start = torch.tensor([[start_id]])
    warm = segments[0]["prompt"][:, :8]  # one untimed call each: first calls build weight buffers and tables
    decoder(warm)
    if prefix_lm is not None:
        prefix_lm(warm, prefix_len=warm.shape[1])
    if encdec is not None:
        encdec(start, encoder_input_ids=warm)
    for turn, seg in enumerate(segments):
        new = seg["prompt"]
        convo = torch.cat([history, new], dim=1)
        H = history.shape[1]
        logits: dict[str, torch.Tensor] = {}

        def reuse(H=H, new=new):
            cache.truncate(H)
            return decoder(new, cache=cache, logits_to_keep=1)[:, -1]

        def recompute(convo=convo):
            fresh = decoder.new_cache(max_len=convo.shape[1])
            return decoder(convo, cache=fresh, logits_to_keep=1)[:, -1]

        def prefix(convo=convo):
            return prefix_lm(convo, prefix_len=convo.shape[1], logits_to_keep=1)[:, -1]

        def encoder_decoder(convo=convo):
            c = encdec.new_cache(max_len=8)
            return encdec(start, cache=c, encoder_input_ids=convo, logits_to_keep=1)[:, -1]

        fns = {"reuse": reuse, "recompute": recompute, "prefix": prefix, "encdec": encoder_decoder}
        last = turn == len(segments) - 1
        n_rep = {k: (max(repeats, final_repeats) if last and k in ("reuse", "recompute") else repeats)
                 for k in strategies}
        samples = {k: [] for k in strategies}
        for r in range(max(n_rep.values())):
            for k in strategies:
                if r < n_rep[k]:
                    dt, logits[k] = _time(fns[k])
                    samples[k].append(dt)
        for k in strategies:
            out["times"][k].append(samples[k])
            out["ttft"][k].append(statistics.median(samples[k]))
        out["logit_err"].append(float((logits["reuse"] - logits["recompute"]).abs().max()))
        out["history"].append(H)
        out["new"].append(new.shape[1])
        cache.truncate(H + new.shape[1])
        decoder(seg["reply"], cache=cache, logits_to_keep=1)  # the reply goes in as if it had been generated
        history = torch.cat([convo, seg["reply"]], dim=1)
    out["cache_nbytes"], out["cache_len"] = cache.nbytes, len(cache)
    return out


@torch.inference_mode()
def turn_ttft(decoder: Transformer, segments: Sequence[Mapping[str, torch.Tensor]], turn: int,
              repeats: int = 7) -> dict:
    """Time to first token at one turn (1-based), reuse vs recompute, interleaved ``repeats`` times.

    The cache for the earlier turns is filled untimed. Returns ``history``, ``new``, ``reuse`` and
    ``recompute`` (lists of seconds), their medians, ``ratio`` (recompute / reuse medians) and ``logit_err``.
    """
    _check_segments(segments)
    if isinstance(turn, bool) or not isinstance(turn, int) or not 1 <= turn <= len(segments):
        raise ValueError(f"turn must be an int in [1, {len(segments)}], got {turn!r}")
    _check_count("repeats", repeats, 1)
    decoder.eval()
    history = torch.cat([torch.cat([s["prompt"], s["reply"]], dim=1) for s in segments[:turn - 1]]
                        or [torch.empty(1, 0, dtype=torch.long)], dim=1)
    new = segments[turn - 1]["prompt"]
    convo = torch.cat([history, new], dim=1)
    cache = decoder.new_cache(max_len=convo.shape[1])
    if history.shape[1]:
        decoder(history, cache=cache)
    H = history.shape[1]
    got = {}

    def reuse():
        cache.truncate(H)
        got["reuse"] = decoder(new, cache=cache, logits_to_keep=1)[:, -1]

    def recompute():
        fresh = decoder.new_cache(max_len=convo.shape[1])
        got["recompute"] = decoder(convo, cache=fresh, logits_to_keep=1)[:, -1]

    times = interleaved_times({"reuse": reuse, "recompute": recompute}, repeats=repeats, threads=None)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"history": H, "new": new.shape[1], **times, "reuse_median": med["reuse"],
            "recompute_median": med["recompute"], "ratio": med["recompute"] / med["reuse"],
            "logit_err": float((got["reuse"] - got["recompute"]).abs().max())}


@torch.inference_mode()
def stale_cache_error(model: Transformer, ids: torch.Tensor, history_len: int, new_len: int,
                      reply_len: int) -> dict:
    """What goes wrong when a cache is reused after the context it encoded has grown.

    ids (B, N) with N >= history_len + new_len + reply_len. The cache is filled with the history (for a
    prefix LM, as its prefix); then the new tokens join the context (for a prefix LM, the prefix grows to
    history_len + new_len) and the reply follows. ``fresh`` recomputes everything; ``stale`` reuses the
    history's cache. Returns per layer the relative change ||K_stale - K_fresh|| / ||K_fresh|| of the
    history's keys (``key_change``) and values (``value_change``), and on the reply positions the largest
    logit difference (``max_logit_err``), the mean KL(fresh || stale) in nats (``kl``), the next-token loss
    of each (``loss_fresh``, ``loss_stale``) and the share of positions whose argmax differs (``flips``).
    A causal decoder gives zeros (up to float rounding); a prefix LM does not.
    """
    import torch.nn.functional as F

    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    H, M, R = (_check_count(n, v, 1) for n, v in
               (("history_len", history_len), ("new_len", new_len), ("reply_len", reply_len)))
    if ids.dim() != 2 or ids.shape[1] < H + M + R:
        raise ValueError(f"ids must be (B, N >= {H + M + R}), got {tuple(ids.shape)}")
    model.eval()
    prefix = model.config.mask == "prefix"
    kw = (lambda p: {"prefix_len": p}) if prefix else (lambda p: {})
    B = ids.shape[0]
    fresh_cache = model.new_cache(batch_size=B, max_len=H + M + R)
    fresh = model(ids[:, :H + M + R], cache=fresh_cache, **kw(H + M))[:, H + M - 1:H + M + R - 1]
    stale_cache = model.new_cache(batch_size=B, max_len=H + M + R)
    model(ids[:, :H], cache=stale_cache, **kw(H))
    stale = model(ids[:, H:H + M + R], cache=stale_cache, **kw(H + M))[:, M - 1:M + R - 1]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).double().norm() / b.double().norm())

    key_change = [rel(stale_cache.keys(i)[:, :, :H], fresh_cache.keys(i)[:, :, :H])
                  for i in range(model.config.n_layers)]
    value_change = [rel(stale_cache.values(i)[:, :, :H], fresh_cache.values(i)[:, :, :H])
                    for i in range(model.config.n_layers)]
    target = ids[:, H + M:H + M + R]
    lf, ls = F.log_softmax(fresh.double(), -1), F.log_softmax(stale.double(), -1)
    return {
        "key_change": key_change,
        "value_change": value_change,
        "max_logit_err": float((fresh - stale).abs().max()),
        "kl": float((lf.exp() * (lf - ls)).sum(-1).mean()),
        "loss_fresh": float(F.nll_loss(lf.flatten(0, 1), target.flatten())),
        "loss_stale": float(F.nll_loss(ls.flatten(0, 1), target.flatten())),
        "flips": float((fresh.argmax(-1) != stale.argmax(-1)).double().mean()),
    }


def dialogue_flops(config: Config, history: Sequence[int], new: Sequence[int],
                   n_decoder_layers: int | None = None) -> dict[str, list[int]]:
    """FLOPs to the first token per turn for the four strategies of :func:`dialogue_ttft`."""
    out = {"reuse": [], "recompute": [], "prefix": [], "encdec": []}
    for H, m in zip(history, new):
        out["reuse"].append(forward_flops(config, m, H, mask="causal", logits="last")["total"])
        out["recompute"].append(forward_flops(config, H + m, 0, mask="causal", logits="last")["total"])
        out["prefix"].append(forward_flops(config, H + m, 0, mask="prefix", prefix_len=H + m,
                                           logits="last")["total"])
        out["encdec"].append(encdec_first_token_flops(config, H + m, n_decoder_layers)["total"])
    return out
