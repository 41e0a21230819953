"""The model's own attention skips attention()'s and KVCache.update()'s checks (the model validated its cache
once per call); a direct call of the public Attention module with a cache, and a cache of another dtype given
to a model, must still be refused with the argument named, not broadcast or fail inside torch."""

import pytest
import torch

from anatomy.cache import KVCache
from anatomy.encoder_decoder import EncoderDecoder
from anatomy.model import Attention, Config, Transformer

CONFIG = Config(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


@pytest.mark.parametrize(
    "shape, message",
    [((1, 2, 2, 8, 64), "do not fit"), ((1, 1, 1, 8, 64), "do not fit"), ((1, 1, 2, 8, 3), "overflow")],
)
def test_direct_attention_call_checks_its_cache(shape, message):
    attn = Attention(CONFIG).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        attn(torch.randn(1, 5, 32), mask="causal", cache=KVCache(*shape), layer=0)
    with torch.no_grad(), pytest.raises(ValueError, match="layer"):
        attn(torch.randn(1, 5, 32), mask="causal", cache=KVCache(1, 1, 2, 8, 64), layer=3)


def test_direct_attention_call_with_cache_is_the_model_path():
    torch.manual_seed(0)
    attn = Attention(CONFIG).eval()
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        direct = attn(x, mask="causal", cache=KVCache(1, 1, 2, 8, 64), layer=0)[0]
        fast = attn(x, mask="causal", cache=KVCache(1, 1, 2, 8, 64), layer=0, _checked=True)[0]
        plain = attn(x, mask="causal")[0]
    assert torch.equal(direct, fast) and torch.equal(direct, plain)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "reference", "tiled"])
def test_cache_of_another_dtype_is_refused(backend, dtype):
    c = Config(**{**CONFIG.__dict__, "attn_backend": backend})
    model = Transformer(c).eval()
    cache = KVCache(c.n_layers, 1, c.n_kv_heads, c.head_dim, 64, dtype=dtype)
    with torch.no_grad(), pytest.raises(TypeError, match="cache"):
        model(torch.randint(0, 50, (1, 6)), cache=cache)
    assert len(cache) == 0


def test_encoder_decoder_cache_of_another_dtype_is_refused():
    model = EncoderDecoder(CONFIG).eval()
    cache = KVCache(CONFIG.n_layers, 1, CONFIG.n_kv_heads, CONFIG.head_dim, 64, dtype=torch.float64)
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad(), pytest.raises(TypeError, match="cache"):
        model(ids, cache=cache, encoder_input_ids=ids)
