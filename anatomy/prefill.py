"""A forward pass over many new tokens with a KV cache (a prompt's prefill, a chat turn), products by oneDNN.

A prefill is matrix products: for SmolLM2-135M and a 512-token prompt, ~109 GFLOP of the ~1.3 s the
textbook path takes on this machine's CPU go through ``F.linear``, which calls MKL's sgemm. On this AMD CPU
MKL runs those shapes at ~100 GFLOP/s, while oneDNN, the other matrix library PyTorch ships (and which it
calls through ``torch.ops.mkldnn._linear_pointwise``, the op its compiler uses for linear layers), runs the
same float32 products at ~200 GFLOP/s (measured; most likely MKL's choice of code path on a CPU that is
not Intel's, so on an Intel CPU the two should be closer). :func:`forward` is the model's forward pass with
that one change: the same operations in the same order as :class:`anatomy.model.Transformer`'s (RMSNorm,
q/k/v as one product, RoPE, the cache append, attention through the model's backend, SwiGLU, residual adds,
the final norm, the head on the kept positions), with every product by oneDNN, except the head's when at
most 16 rows are kept (generation keeps one): one row streams the head's weights ~2x faster through
:func:`anatomy.decode.matmul`. Its numbers equal the textbook path's up to the order of the sums inside the
products (``tests/test_decode_prefill.py``).

:class:`anatomy.model.Transformer` calls :func:`forward` for a call with a cache when the one-call C step of
:mod:`anatomy.decode` did not take it (more than :data:`anatomy.decode.MAX_TOKENS` new tokens, or a batch),
and uses its result when it is not None. The conditions are the C step's (float32 weights on the CPU in the
input-major layout, a causal pre-norm Llama-style decoder without biases, inference, no hooks, no dispatch
or function mode; see :mod:`anatomy.decode`), minus the compiler, plus that PyTorch was built with oneDNN
(and ``torch.backends.mkldnn`` is enabled) and the CPU is x86-64, where its speed was measured;
:func:`anatomy.decode.disabled` switches this path off too. A forward pass without a cache (scoring a text)
and every training step run the textbook path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anatomy import decode, fused
from anatomy.attention import _self_attention
from anatomy.cache import KVCache

__all__ = ["forward"]


# oneDNN's linear op or None: the same one-time check as the training step's (its cache is shared)
_op = fused._onednn


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` (no bias) by oneDNN, for float32 CPU tensors under inference (no autograd)."""
    op = _op()
    if op is None:
        return F.linear(x, weight)
    return op(x, weight, None, "none", [], "")


def forward(
    model: torch.nn.Module, input_ids: torch.Tensor, cache: KVCache, logits_to_keep: int = 0
) -> torch.Tensor | None:
    """Logits (B, n, vocab) of ``input_ids`` (B, N) after the ``cache``'s tokens, appended to the cache; n =
    ``logits_to_keep`` or N. None if this path does not apply (see the module's docstring), and then nothing
    has changed. For :class:`anatomy.model.Transformer`, after it has checked its arguments."""
    if (
        not decode._may_run(model, input_ids, cache)
        or _op() is None
        or not torch.backends.mkldnn.enabled  # switched off with torch.backends.mkldnn.flags(enabled=False)
        or decode._plan(model) is None
    ):
        return None
    from anatomy.model import _rotate  # noqa: PLC0415 (anatomy.model imports this module)
    from anatomy.weight_layout import fused_weight  # noqa: PLC0415

    c = model.config
    B, N = input_ids.shape
    Hq, Hkv, hd, d = c.n_heads, c.n_kv_heads, c.head_dim, c.d_model
    rope = model.rope(len(cache), N, input_ids.device, torch.float32)
    x = model.embed_tokens(input_ids)
    for i, block in enumerate(model.layers):
        attn, mlp = block.self_attn, block.mlp
        h = torch.rms_norm(x, (d,), block.input_layernorm.weight, block.input_layernorm.eps)
        qkv = _linear(h, fused_weight(attn, decode._QKV)[0]).view(B, N, Hq + 2 * Hkv, hd).transpose(1, 2)
        qk, v = qkv.split_with_sizes((Hq + Hkv, Hkv), dim=1)
        q, k = _rotate(qk, rope).split_with_sizes((Hq, Hkv), dim=1)  # queries and keys rotated together
        k, v = cache._append(i, k, v)
        out = _self_attention(q, k, v, "causal", c.attn_backend, c.tile)
        x = x + _linear(out.transpose(1, 2).reshape(B, N, Hq * hd), attn.o_proj.weight)
        h = torch.rms_norm(x, (d,), block.post_attention_layernorm.weight, block.post_attention_layernorm.eps)
        gate, up = _linear(h, fused_weight(mlp, decode._GATE_UP)[0]).chunk(2, dim=-1)
        x = x + _linear(F.silu(gate) * up, mlp.down_proj.weight)
    if logits_to_keep:
        x = x[:, -logits_to_keep:]  # the norm is per position: the kept rows' numbers are the same
    x = torch.rms_norm(x, (d,), model.norm.weight, model.norm.eps)
    cache.commit(input_ids)
    if B * x.shape[1] <= decode.MAX_TOKENS and decode._library() is not None:
        # a few rows (generation keeps one): the C step's product streams the head's 113 MB (SmolLM2) ~2x
        # faster than oneDNN, which is built for many rows
        return decode.matmul(x.reshape(-1, d), model.lm_head.weight).view(B, x.shape[1], -1)
    return _linear(x, model.lm_head.weight)
