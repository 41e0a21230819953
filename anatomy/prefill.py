"""A forward pass over many new tokens with a KV cache (a prompt's prefill, a chat turn), products by oneDNN.

A prefill is matrix products: for SmolLM2-135M and a 512-token prompt, ~109 GFLOP of the ~1.3 s the
textbook path takes on this machine's CPU go through ``F.linear``, which calls MKL's sgemm. On this AMD CPU
MKL runs those shapes at ~100 GFLOP/s, while oneDNN, the other matrix library PyTorch ships (and which it
calls through ``torch.ops.mkldnn._linear_pointwise``, the op its compiler uses for linear layers), runs the
same float32 products at ~200 GFLOP/s (measured; most likely MKL's choice of code path on a CPU that is
not Intel's, so on an Intel CPU the two should be closer). :func:`forward` is the model's forward pass with
that one change: the same operations in the same order as :class:`anatomy.model.Transformer`'s (RMSNorm,
q/k/v as one product, RoPE, the cache append, causal attention, SwiGLU, residual adds, the final norm, the
head on the kept positions), with every product by oneDNN, except the head's when at most 16 rows are kept
(generation keeps one): one row streams the head's weights ~2x faster through :func:`anatomy.decode.matmul`.
The blocks' weights are reordered once into oneDNN's own layout and kept (:func:`_packed`), and attention
is the formula with its two products by oneDNN too (:func:`anatomy.attention._causal_block`, whatever the
config's ``attn_backend``, as the C step does; 1.16x faster than SDPA at a chat turn's shape, measured
once under load). Its numbers equal the textbook path's up to the order of the sums inside the products
(``tests/test_decode_prefill.py``).

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

import functools
import weakref

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from anatomy import decode, fused
from anatomy.attention import _causal_block
from anatomy.cache import KVCache

__all__ = ["forward"]


# oneDNN's linear op or None: the same one-time check as the training step's (its cache is shared)
_op = fused._onednn


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` (no bias) by oneDNN, for float32 CPU tensors under inference (no autograd); ``weight``
    may also be one in oneDNN's own layout (:func:`_packed`)."""
    op = _op()
    if op is None:
        return F.linear(x, weight)
    return op(x, weight, None, "none", [], "")


@functools.cache
def _pack_op():
    """oneDNN's reorder of a linear weight into its own layout, or None if missing or wrong here."""
    try:
        pack, op = torch.ops.mkldnn._reorder_linear_weight, _op()
        if op is None:
            return None
        g = torch.Generator().manual_seed(0)
        x, w = (torch.randn(*s, generator=g, dtype=torch.float32) for s in ((5, 7), (7, 3)))  # w input-major
        with torch.no_grad():
            ok = torch.allclose(op(x, pack(w.t(), None), None, "none", [], ""), x @ w, atol=1e-5)
    except (AttributeError, RuntimeError):
        return None
    return pack if ok else None


# model -> (the Parameters' (pointer, version) keys, the packed matrices per layer); dies with the model,
# and a deep copy or a state dict never sees it
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _drop_after_optimizer_step(optimizer, args, kwargs) -> None:
    """After any optimizer's step: forget every model's reordered weights (:func:`_packed`), since a fused
    step changes Parameters in place without bumping their version counters."""
    _PACKED.clear()


register_optimizer_step_post_hook(_drop_after_optimizer_step)
_NAMES = (
    ("self_attn", decode._QKV),
    ("self_attn", ("o_proj",)),
    ("mlp", decode._GATE_UP),
    ("mlp", ("down_proj",)),
)


def _packed(model: torch.nn.Module) -> list[tuple[torch.Tensor, ...]] | None:
    """Every block's four weight matrices (q/k/v, o, gate/up, down) in oneDNN's own blocked layout.

    Given a plain (here input-major) weight, oneDNN's linear op first reorders it into that layout, on every
    call: for SmolLM2 that rewrites the blocks' 425 MB per call, and a second thread did not make it faster
    (the four products of 30 layers for 50 rows, measured under load: 67.6 -> 56.5 ms at 1 thread, CPU
    clock, and 79 -> 61 ms at 2 threads, wall; one row 18.1 -> 13.6 ms at 1 thread). Reordered once and kept
    here, the products read them as they are, with the same kernel and so the same bits. Kept per model
    (425 MB more memory for SmolLM2, while it lives) and made again when a weight changed: each Parameter's
    pointer and version counter are compared on every call, and an in-place change (a ``copy_`` under
    ``no_grad``, a foreach optimizer step) bumps the version. Two writes bump nothing: a fused optimizer step
    (torch's fused AdamW, which :mod:`anatomy.train` uses, updates the weights without a version bump on the
    CPU), so every optimizer step drops all kept matrices (:func:`_drop_after_optimizer_step`, registered
    with torch.optim); and a write through ``.data``, which is not seen: change weights in place as PyTorch
    recommends, or call ``anatomy.prefill._PACKED.pop(model)``. None (plain weights) if oneDNN cannot
    reorder here, or if a weight is an inference tensor (made under ``torch.inference_mode``: it has no
    version counter, so a change to it could not be seen).
    """
    pack = _pack_op()
    if pack is None:
        return None
    groups = [(getattr(block, owner), names) for block in model.layers for owner, names in _NAMES]
    params = [owner._modules[name]._parameters["weight"] for owner, names in groups for name in names]
    if any(p.is_inference() for p in params):
        return None
    keys = [(p.data_ptr(), p._version) for p in params]
    kept = _PACKED.get(model)
    if kept is not None and kept[0] == keys:
        return kept[1]
    _PACKED.pop(model, None)  # the old matrices go before the new ones are made
    with torch.no_grad():
        layers = [tuple(pack(w, None) for w in _block_weights(block)) for block in model.layers]
    _PACKED[model] = (keys, layers)
    return layers


def _block_weights(block: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """A block's four weight matrices as the products take them (q/k/v and gate/up each fused), in
    :data:`_NAMES`' order: what :func:`_packed` reorders, and what :func:`forward` uses without it."""
    from anatomy.weight_layout import fused_weight  # noqa: PLC0415 (anatomy.model imports this module)

    return tuple(
        fused_weight(owner, names)[0] if len(names) > 1 else owner._modules[names[0]].weight
        for owner, names in ((getattr(block, o), names) for o, names in _NAMES)
    )


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

    c = model.config
    B, N = input_ids.shape
    Hq, Hkv, hd, d = c.n_heads, c.n_kv_heads, c.head_dim, c.d_model
    packed = _packed(model)
    rope = model.rope(len(cache), N, input_ids.device, torch.float32)
    x = model.embed_tokens(input_ids)
    for i, block in enumerate(model.layers):
        w_qkv, w_o, w_gate_up, w_down = packed[i] if packed is not None else _block_weights(block)
        h = torch.rms_norm(x, (d,), block.input_layernorm.weight, block.input_layernorm.eps)
        qkv = _linear(h, w_qkv).view(B, N, Hq + 2 * Hkv, hd).transpose(1, 2)
        qk, v = qkv.split_with_sizes((Hq + Hkv, Hkv), dim=1)
        q, k = _rotate(qk, rope).split_with_sizes((Hq, Hkv), dim=1)  # queries and keys rotated together
        k, v = cache._append(i, k, v)
        out = _causal_block(q, k, v, _linear)  # (B, N, Hq, hd)
        x = x + _linear(out.view(B, N, Hq * hd), w_o)
        h = torch.rms_norm(x, (d,), block.post_attention_layernorm.weight, block.post_attention_layernorm.eps)
        gate, up = _linear(h, w_gate_up).chunk(2, dim=-1)
        x = x + _linear(F.silu(gate) * up, w_down)
    if logits_to_keep:
        x = x[:, -logits_to_keep:]  # the norm is per position: the kept rows' numbers are the same
    x = torch.rms_norm(x, (d,), model.norm.weight, model.norm.eps)
    cache.commit(input_ids)
    if B * x.shape[1] <= decode.MAX_TOKENS and decode._library() is not None:
        # a few rows (generation keeps one): the C step's product streams the head's 113 MB (SmolLM2) ~2x
        # faster than oneDNN, which is built for many rows
        return decode.matmul(x.reshape(-1, d), model.lm_head.weight).view(B, x.shape[1], -1)
    return _linear(x, model.lm_head.weight)
