"""The cost model: parameters, FLOPs and bytes of a forward call, counted from a Config (no weights
needed), and the configurations of published models.

Conventions: a multiply-add is 2 FLOPs. Attention FLOPs count only the (query, key) pairs the mask lets
through (``visible_pairs``): 2 * head_dim for q.k and 2 * head_dim for the weighted sum of values, per pair
and query head. Softmax, norms, RoPE and activations are left out (they are < 1 % here). Bytes are the
minimum traffic to main memory for one forward call: every weight once (whatever the batch size), the KV
cache read once, the new keys and values written once.
"""

from __future__ import annotations

from dataclasses import replace

from anatomy._checks import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_positive_int,
    is_int,
)
from anatomy.cache import kv_cache_bytes
from anatomy.masks import MASKS
from anatomy.model import Config

__all__ = [
    "COUNTINGS",
    "attention_pairs",
    "tile_walk",
    "PUBLISHED",
    "PUBLISHED_SOURCES",
    "attention_kind",
    "decode_bytes",
    "encdec_first_token_flops",
    "forward_flops",
    "kv_bytes_per_token",
    "linear_params",
    "param_counts",
    "published_config",
    "step_bytes",
    "step_intensity",
    "visible_pairs",
    "training_flops",
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
    "GPT-3 175B": "Brown et al. 2020, Table 2.1 (96 layers, d_model 12288, 96 heads of 128, context 2048)",
}


def _llama(vocab, d, layers, heads, kv_heads, d_ff, tie=False, head_dim=None, max_len=8192) -> Config:
    return Config(
        vocab_size=vocab,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        max_seq_len=max_len,
        tie_embeddings=tie,
    )


# name -> (builder, attention kind). Building a Config allocates nothing.
_PUBLISHED = {
    "SmolLM2-135M": (lambda: _llama(49152, 576, 30, 9, 3, 1536, tie=True), "GQA"),
    "Llama-2-7B": (lambda: _llama(32000, 4096, 32, 32, 32, 11008, max_len=4096), "MHA"),
    "Falcon-7B": (
        lambda: Config(
            vocab_size=65024,
            d_model=4544,
            n_layers=32,
            n_heads=71,
            n_kv_heads=1,
            head_dim=64,
            d_ff=4 * 4544,
            mlp="gelu",
            norm="layer",
            max_seq_len=2048,
            tie_embeddings=True,
        ),
        "MQA",
    ),
    "Llama-3-8B": (lambda: _llama(128256, 4096, 32, 32, 8, 14336), "GQA"),
    "Llama-3-70B": (lambda: _llama(128256, 8192, 80, 64, 8, 28672), "GQA"),
    "GPT-3 175B": (
        lambda: Config(
            vocab_size=50257,
            d_model=12288,
            n_layers=96,
            n_heads=96,
            d_ff=4 * 12288,
            mlp="gelu",
            norm="layer",
            pos="learned",
            max_seq_len=2048,
        ),
        "MHA",
    ),
}
PUBLISHED: tuple[str, ...] = tuple(_PUBLISHED)


def published_config(name: str) -> Config:
    """The anatomy Config of a published model (see ``PUBLISHED`` and ``PUBLISHED_SOURCES``)."""
    return _PUBLISHED[check_choice("name", name, PUBLISHED)][0]()


def attention_kind(config: Config) -> str:
    """'MHA' (one K/V head per query head), 'MQA' (one K/V head) or 'GQA' (groups in between)."""
    check_instance("config", config, Config, "an anatomy Config")
    if config.n_kv_heads == config.n_heads:
        return "MHA"
    return "MQA" if config.n_kv_heads == 1 else "GQA"


# ---------------------------------------------------------------------------------------------------------
# Parameters and FLOPs
# ---------------------------------------------------------------------------------------------------------


def linear_params(config: Config, *, cross_attention: bool = False) -> int:
    """Weights of one block's matrices (q, k, v, o and the MLP; + cross-attention q, k, v, o if asked)."""
    c = check_instance("config", config, Config, "an anatomy Config")
    check_bool("cross_attention", cross_attention)
    attn = c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.d_model
    mlp = (3 if c.mlp == "swiglu" else 2) * c.d_model * c.d_ff
    return attn * (2 if cross_attention else 1) + mlp


def param_counts(config: Config) -> dict[str, int]:
    """Parameter counts by part: embedding, blocks (matrices), norms, head (0 if tied) and totals.

    ``non_embedding`` follows ``Transformer.num_params()``: everything but the token (and position)
    embedding tables; an untied LM head counts, a tied one is the embedding.
    """
    c = check_instance("config", config, Config, "an anatomy Config")
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
    return {
        "embedding": embedding,
        "blocks": blocks,
        "norms": norms,
        "head": head,
        "biases": biases,
        "non_embedding": non_embedding,
        "total": non_embedding + embedding,
    }


def visible_pairs(mask: str, n_queries: int, n_keys: int, prefix_len: int | None = None) -> int:
    """How many (query, key) pairs a mask lets through, queries being the last n_queries of n_keys positions.

    The closed form of ``anatomy.masks.dense_mask(mask, n_queries, n_keys, prefix_len=...).sum()``, without
    building the matrix (Llama-3-70B at 8k tokens would need 64M entries).
    """
    check_int("n_queries", n_queries, lo=1)
    check_int("n_keys", n_keys, lo=n_queries)
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
        p = min(check_int("prefix_len", prefix_len, lo=0), n_keys)
        # queries whose causal reach (pos + 1) is below p see p keys instead
        k = p - offset - 1  # queries r < k see p keys instead of their causal reach offset + r + 1
        r_max = min(n_queries, max(0, k))
        extra = r_max * k - r_max * (r_max - 1) // 2
        return causal + extra
    raise ValueError(f"mask must be 'causal', 'bidirectional' or 'prefix', got {mask!r}")


COUNTINGS = ("ideal", "tiles", "dense")


def _tiles(tile) -> tuple[int, int]:
    if is_int(tile):
        tq = tk = tile
    elif isinstance(tile, tuple) and len(tile) == 2:
        tq, tk = tile
    elif isinstance(tile, tuple):
        raise ValueError(f"tile must be an int or a (query tile, key tile) pair, got {tile!r}")
    else:
        raise TypeError(f"tile must be an int or a (query tile, key tile) pair, got {type(tile).__name__}")
    return check_positive_int("tile", tq), check_positive_int("tile", tk)


def attention_pairs(
    mask: str,
    n_ctx: int,
    *,
    counting: str = "ideal",
    tile: int | tuple[int, int] = 128,
    prefix_len: int | None = None,
) -> int:
    """Number of (query, key) pairs whose score is computed for one head of a sequence of n_ctx tokens.

    ``counting``: ``"ideal"`` (only the visible pairs, :func:`visible_pairs`), ``"tiles"`` (whole tiles, as a
    tiled kernel that skips empty tiles computes them and :func:`anatomy.masks.count_tiles` classifies them)
    or ``"dense"`` (the full square, a kernel without tile skipping). ``tile`` is an int or a (query tile,
    key tile) pair. Closed forms, O(n_ctx / tile) work (so 128k-token contexts cost nothing).
    """
    check_positive_int("n_ctx", n_ctx)
    tile_q, tile_k = _tiles(tile)
    check_choice("mask", mask, MASKS)
    check_choice("counting", counting, COUNTINGS)
    if mask == "prefix":
        if not is_int(prefix_len) or not 0 <= prefix_len <= n_ctx:
            raise ValueError(f'mask="prefix" needs prefix_len in [0, {n_ctx}], got {prefix_len!r}')
    p = prefix_len if mask == "prefix" else 0
    if mask == "bidirectional" or counting == "dense":
        return n_ctx * n_ctx
    if counting == "ideal":  # query i sees keys [0, max(p, i + 1))
        return visible_pairs(mask, n_ctx, n_ctx, p if mask == "prefix" else None)
    return tile_walk(n_ctx, tile_q, tile_k, p)[1]


def tile_walk(n_ctx: int, tile_q: int, tile_k: int, p: int = 0) -> tuple[int, int]:
    """(key tiles visited, pairs computed) by a tiled kernel, causal with the first p keys visible to all."""
    check_int("n_ctx", n_ctx, lo=0)
    check_positive_int("tile_q", tile_q)
    check_positive_int("tile_k", tile_k)
    check_int("p", p, lo=0)
    tiles = pairs = 0
    for r0 in range(0, n_ctx, tile_q):  # query tile [r0, r1) needs keys [0, max(p, r1))
        r1 = min(r0 + tile_q, n_ctx)
        n_key_tiles = -(-max(p, r1) // tile_k)
        tiles += n_key_tiles
        pairs += (r1 - r0) * min(n_key_tiles * tile_k, n_ctx)
    return tiles, pairs


def forward_flops(
    config: Config,
    n_new: int,
    n_past: int = 0,
    *,
    mask: str | None = None,
    prefix_len: int | None = None,
    logits: str = "all",
    batch: int = 1,
    counting: str = "ideal",
    tile: int | tuple[int, int] = 128,
) -> dict[str, int]:
    """Matmul FLOPs of one forward call that runs ``n_new`` tokens after ``n_past`` cached ones.

    Args:
        config: the model's shape; ``mask`` defaults to ``config.mask``.
        logits: the LM head on every new position ("all", as anatomy models compute it), only the last
            ("last", generation) or none ("none").
        counting, tile: which attention pairs are counted (see :func:`attention_pairs`); "tiles" and "dense"
            describe a whole-sequence pass (``n_past == 0``).

    Returns:
        ``linear`` (the blocks' matrices), ``attention`` (q.k and the weighted values over the counted
        pairs), ``head`` (the LM head) and ``total``; ``attention / total`` is attention's share.
    """
    c = check_instance("config", config, Config, "an anatomy Config")
    check_int("n_new", n_new, lo=1)
    check_int("n_past", n_past, lo=0)
    check_int("batch", batch, lo=1)
    check_choice("logits", logits, ("all", "last", "none"))
    check_choice("counting", counting, COUNTINGS)
    mask = mask or c.mask
    if counting == "ideal":
        pairs = visible_pairs(mask, n_new, n_past + n_new, prefix_len)
    elif n_past:
        raise ValueError(f'counting="{counting}" counts a whole pass: it needs n_past=0, got {n_past}')
    else:
        pairs = attention_pairs(mask, n_new, counting=counting, tile=tile, prefix_len=prefix_len)
    linear = 2 * n_new * c.n_layers * linear_params(c)
    attention = 4 * c.n_layers * c.n_heads * c.head_dim * pairs
    head_positions = {"all": n_new, "last": 1, "none": 0}[logits] if c.lm_head else 0
    head = 2 * head_positions * c.d_model * c.vocab_size
    out = {"linear": linear, "attention": attention, "head": head}
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def encdec_first_token_flops(
    config: Config, n_source: int, n_decoder_layers: int | None = None
) -> dict[str, int]:
    """FLOPs for an encoder-decoder's first output token: encode the source, project every decoder layer's
    cross-attention keys and values, run one decoder token (self-attention to itself, cross-attention to
    the source) and the LM head once. ``config`` is the encoder's; the decoder has the same shape."""
    c = check_instance("config", config, Config, "an anatomy Config")
    check_int("n_source", n_source, lo=1)
    L_dec = check_positive_int("n_decoder_layers", n_decoder_layers, none=True) or c.n_layers
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
    c = check_instance("config", config, Config, "an anatomy Config")
    return kv_cache_bytes(c.n_layers, c.n_kv_heads, c.head_dim, 1, bytes_per_elem)


def step_bytes(
    config: Config,
    n_new: int,
    n_past: int = 0,
    *,
    batch: int = 1,
    weight_bytes: int = 4,
    kv_bytes: int = 4,
    logits: str = "all",
) -> dict[str, int]:
    """Minimum memory traffic of one forward call: weights once, the cache read once, new K/V written once.

    Weights are the blocks' matrices plus the LM head matrix (tied or not, it is read), not the embedding
    table (only ``n_new`` rows of it are touched, counted with the activations as negligible).
    """
    c = check_instance("config", config, Config, "an anatomy Config")
    check_int("n_new", n_new, lo=1)
    check_int("n_past", n_past, lo=0)
    check_int("batch", batch, lo=1)
    check_positive_int("weight_bytes", weight_bytes)
    check_positive_int("kv_bytes", kv_bytes)
    check_choice("logits", logits, ("all", "last", "none"))
    head = c.vocab_size * c.d_model if (c.lm_head and logits != "none") else 0
    weights = (c.n_layers * linear_params(c) + head) * weight_bytes
    per_token = kv_bytes_per_token(c, kv_bytes)
    out = {"weights": weights, "kv_read": batch * n_past * per_token, "kv_write": batch * n_new * per_token}
    out["total"] = sum(out.values())
    return out


def decode_bytes(config: Config, context: int, **kw) -> int:
    """Bytes one decode step moves (one new token after ``context`` cached ones)."""
    check_int("context", context, lo=0)
    return step_bytes(config, 1, context, **kw)["total"]


def step_intensity(
    config: Config,
    n_new: int,
    n_past: int = 0,
    *,
    batch: int = 1,
    weight_bytes: int = 4,
    kv_bytes: int = 4,
    logits: str = "all",
) -> float:
    """Arithmetic intensity (FLOPs per byte) of one forward call of ``batch`` sequences."""
    f = forward_flops(config, n_new, n_past, logits=logits, batch=batch)["total"]
    b = step_bytes(
        config, n_new, n_past, batch=batch, weight_bytes=weight_bytes, kv_bytes=kv_bytes, logits=logits
    )["total"]
    return f / b


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: forward and backward FLOPs of training N parameters on D tokens (Kaplan et al. 2020)."""
    check_float("n_params", n_params, lo=0, lo_open=True)
    check_float("n_tokens", n_tokens, lo=0, lo_open=True)
    return 6.0 * n_params * n_tokens
