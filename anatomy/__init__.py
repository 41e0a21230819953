"""anatomy: the code behind *Why Decoder-Only Won*.

Two tiers. The core, at the top of the package: masks, attention and its kernels, one transformer whose
mask makes it a decoder, an encoder or a prefix LM, an encoder-decoder, a KV cache, generation, speculative
decoding, training, objectives, data, metrics, the cost model, timing, and loaders for two real pretrained
models. ``anatomy.experiments``: one module per chapter argument, built on the core. ``anatomy.book``: the
chapters' helpers (glue, style, figures, tables). The core never imports the other two.
"""

import os

# OpenMP reads its wait policy once, when torch loads it. Its default, spinning threads, made CPU training
# up to 6x slower on a busy 2-core machine (measured); chapters import anatomy before torch, so set it here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from anatomy.attention import BACKENDS, attention, attention_probs
from anatomy.cache import KVCache, kv_cache_bytes
from anatomy.encoder_decoder import EncoderDecoder
from anatomy.generate import generate, next_token
from anatomy.masks import MASKS, count_tiles, dense_mask, tile_map
from anatomy.model import Config, ModelOutput, Transformer, to_input_major
from anatomy.speculative import speculative_generate

__version__ = "0.1.0"

# anatomy.convert imports transformers (seconds); these two load it on first use, not at import.


def from_hf(hf_model):
    """Convert a transformers model (Llama family, GPT-2, BERT) to an anatomy model with the same weights."""
    from anatomy.convert import from_hf as _from_hf

    return _from_hf(hf_model)


def to_hf(model):
    """A transformers model with the weights of an anatomy Transformer (the inverse of :func:`from_hf`)."""
    from anatomy.convert import to_hf as _to_hf

    return _to_hf(model)


__all__ = [
    "BACKENDS",
    "MASKS",
    "Config",
    "EncoderDecoder",
    "KVCache",
    "ModelOutput",
    "Transformer",
    "attention",
    "attention_probs",
    "count_tiles",
    "dense_mask",
    "from_hf",
    "generate",
    "kv_cache_bytes",
    "next_token",
    "speculative_generate",
    "tile_map",
    "to_hf",
    "to_input_major",
]
