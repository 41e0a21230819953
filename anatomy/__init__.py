"""anatomy: the code behind *Why Decoder-Only Won*.

A causal attention kernel, one transformer whose mask makes it a decoder, an encoder or a prefix LM,
an encoder-decoder, a KV cache, generation, training, data and loaders for two real pretrained models.
"""

import os

# OpenMP reads its wait policy once, when torch loads it. Its default, spinning threads, made CPU training
# up to 6x slower on a busy 2-core machine (measured); chapters import anatomy before torch, so set it here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from anatomy.attention import BACKENDS, attention, attention_probs
from anatomy.cache import KVCache, kv_cache_bytes
from anatomy.generate import generate, next_token
from anatomy.masks import MASKS, count_tiles, dense_mask, tile_map
from anatomy.model import Config, EncoderDecoder, ModelOutput, Transformer

__version__ = "0.1.0"


def from_hf(hf_model):
    """Convert a transformers model (Llama family, GPT-2, BERT) to an anatomy model with the same weights."""
    from anatomy.pretrained import from_hf as _from_hf

    return _from_hf(hf_model)


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
    "tile_map",
]
