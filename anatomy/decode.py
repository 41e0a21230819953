"""The one-token decoding step of a Llama-style decoder, as one C call per token.

Decoding runs the model on one new token at a time. Its arithmetic is a row vector times every weight
matrix (~538 MB of float32 weights for SmolLM2-135M, streamed from memory once per token) plus a few hundred
small operations (norms, rotary positions, the cache append, attention over the cache, SwiGLU, residual
adds). Through PyTorch, each small operation costs a few microseconds of dispatch (~7 ms per token in all),
and MKL's matrix-vector product streams the weights at about half of what the memory can deliver.
:func:`step` computes the same step in one call of a small C kernel (built once with the system's ``cc``
through :func:`anatomy.packed.compiled`): the matrix-vector products stream the input-major weights
(:func:`anatomy.weight_layout.to_input_major`) row by row, and the small operations run in between
without leaving C. It runs on one thread whatever ``torch.get_num_threads()`` says: one core already streams
the weights near the memory's speed here (a second adds ~15% to a plain read), and keeping two threads in
step costs ~180 waits per token, each a stall of milliseconds whenever the other thread is descheduled (on
this shared 2-core machine a 2-thread step was slower than a 1-thread one).

:class:`anatomy.model.Transformer` calls :func:`step` for a one-token call with a cache (what
:func:`anatomy.generate` does after the prompt) and uses its result when it is not None. It is None, and the
model runs its textbook path, unless everything below holds: float32 weights on the CPU in the input-major
layout, a causal pre-norm decoder with RMSNorm, RoPE, SwiGLU and no biases (SmolLM2, Llama), batch 1,
no autograd (inference), no forward hooks, and a C compiler was found. The numbers are the model's up to
the order of the sums (``tests/test_decode.py`` compares logits and greedy tokens with the textbook path).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

import torch
import torch.nn as nn

from anatomy.cache import KVCache

__all__ = ["disabled", "matvec", "step"]

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* y[n0:n1] = x (K) @ W (K, N) for W row-major (the input-major layout): W streamed in memory order, 4 rows
   at a time, summed into y. Every y[n] is summed in the same order whatever n0 and n1: y = x[0] w[0] + ...
   + x[3] w[3], then y += x[4] w[4] + ... + x[7] w[7], and so on (fused multiply-adds where the CPU has
   them). */
#if defined(__AVX512F__)
#define MV16(LOAD, STORE)                                                                                    \
    {                                                                                                        \
        __m512 s = _mm512_mul_ps(xs[0], LOAD(w + n));                                                        \
        s = _mm512_fmadd_ps(xs[1], LOAD(w + N + n), s);                                                      \
        s = _mm512_fmadd_ps(xs[2], LOAD(w + 2 * N + n), s);                                                  \
        s = _mm512_fmadd_ps(xs[3], LOAD(w + 3 * N + n), s);                                                  \
        STORE(y + n, k ? _mm512_add_ps(LOAD(y + n), s) : s);                                                 \
    }
#define LOAD_ALL(p) _mm512_loadu_ps(p)
#define STORE_ALL(p, v) _mm512_storeu_ps(p, v)
#define LOAD_SOME(p) _mm512_maskz_loadu_ps(m, p)
#define STORE_SOME(p, v) _mm512_mask_storeu_ps(p, m, v)
#endif
static void mv(const float *restrict x, int64_t K, int64_t N, const float *restrict W, float *restrict y,
               int64_t n0, int64_t n1) {
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float *w = W + k * N;
#if defined(__AVX512F__)
        const __m512 xs[4] = {_mm512_set1_ps(x[k]), _mm512_set1_ps(x[k + 1]), _mm512_set1_ps(x[k + 2]),
                              _mm512_set1_ps(x[k + 3])};
        int64_t n = n0;
        for (; n + 16 <= n1; n += 16) MV16(LOAD_ALL, STORE_ALL)
        if (n < n1) {
            const __mmask16 m = (__mmask16)((1u << (n1 - n)) - 1);
            MV16(LOAD_SOME, STORE_SOME)
        }
#else
        for (int64_t n = n0; n < n1; n++) {
            float s = x[k] * w[n];
            s += x[k + 1] * w[N + n];
            s += x[k + 2] * w[2 * N + n];
            s += x[k + 3] * w[3 * N + n];
            y[n] = k ? y[n] + s : s;
        }
#endif
    }
    for (; k < K; k++)
        for (int64_t n = n0; n < n1; n++) y[n] = k ? y[n] + x[k] * W[k * N + n] : x[k] * W[k * N + n];
}

static void rms_norm(const float *x, const float *w, float eps, int64_t d, float *out) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * x[i];
    const float inv = (float)(1.0 / sqrt(ss / d + eps));
    for (int64_t i = 0; i < d; i++) out[i] = (x[i] * inv) * w[i];
}

/* x * cos + roll(x, hd / 2) * sin_signed, in place on one head (the model's _rotate). */
static void rope(float *x, const float *cs, const float *sn, int64_t hd) {
    float tmp[1024];
    const int64_t h = hd / 2;
    for (int64_t i = 0; i < hd; i++) tmp[i] = x[i] * cs[i] + x[i < h ? i + h : i - h] * sn[i];
    for (int64_t i = 0; i < hd; i++) x[i] = tmp[i];
}

/* One decoding step: token `tok` at position `pos`, every layer, the final norm and the LM head.
   dims: d, n_heads, n_kv_heads, head_dim, d_ff, n_layers, vocab; cap: the cache's capacity.
   wp: per layer 6 pointers: input norm, qkv (d, (Hq + 2 Hkv) hd), o (Hq hd, d), post norm,
   gate_up (d, 2 dff), down (dff, d); then the final norm and the LM head (d, vocab). emb: the embedding
   table, element (t, i) at emb[t * es0 + i * es1]. kv: per layer the key and value cache (Hkv, cap, hd).
   cs, sn: the rotation of pos (hd each). buf: scratch of 3 d + (Hq + 2 Hkv) hd + Hq hd + 3 dff floats. */
void decode_step(const int64_t *dims, int64_t cap, float eps, int64_t tok, int64_t pos,
                 const float *const *wp, const float *emb, int64_t es0, int64_t es1, float *const *kv,
                 const float *cs, const float *sn, float *buf, float *logits) {
    const int64_t d = dims[0], hq = dims[1], hkv = dims[2], hd = dims[3], dff = dims[4];
    const int64_t L = dims[5], vocab = dims[6];
    const int64_t nqkv = (hq + 2 * hkv) * hd, group = hq / hkv, len = pos + 1;
    float *x = buf, *h = x + d, *qkv = h + d, *att = qkv + nqkv, *gu = att + hq * hd;
    float *act = gu + 2 * dff, *tmp = act + dff;
    const float scale = 1.0f / sqrtf((float)hd);
    float *s = malloc(sizeof(float) * len);
    if (s == NULL) return;
    for (int64_t i = 0; i < d; i++) x[i] = emb[tok * es0 + i * es1];
    for (int64_t l = 0; l < L; l++) {
        const float *const *w = wp + 6 * l;
        float *kc = kv[2 * l], *vc = kv[2 * l + 1];
        rms_norm(x, w[0], eps, d, h);
        mv(h, d, nqkv, w[1], qkv, 0, nqkv);
        for (int64_t i = 0; i < hq + hkv; i++) rope(qkv + i * hd, cs, sn, hd);  /* q and k heads */
        for (int64_t g = 0; g < hkv; g++)  /* append k and v to the cache */
            for (int64_t i = 0; i < hd; i++) {
                kc[(g * cap + pos) * hd + i] = qkv[(hq + g) * hd + i];
                vc[(g * cap + pos) * hd + i] = qkv[(hq + hkv + g) * hd + i];
            }
        for (int64_t head = 0; head < hq; head++) {  /* softmax(q k / sqrt(hd)) v over the cache */
            const float *q = qkv + head * hd, *K = kc + (head / group) * cap * hd;
            const float *V = vc + (head / group) * cap * hd;
            float *o = att + head * hd, m = -INFINITY, z = 0.0f;
            for (int64_t j = 0; j < len; j++) {
                float dot = 0.0f;
                for (int64_t i = 0; i < hd; i++) dot += q[i] * K[j * hd + i];
                s[j] = dot * scale;
                m = s[j] > m ? s[j] : m;
            }
            for (int64_t i = 0; i < hd; i++) o[i] = 0.0f;
            for (int64_t j = 0; j < len; j++) {
                const float p = expf(s[j] - m);
                z += p;
                for (int64_t i = 0; i < hd; i++) o[i] += p * V[j * hd + i];
            }
            for (int64_t i = 0; i < hd; i++) o[i] /= z;
        }
        mv(att, hq * hd, d, w[2], tmp, 0, d);  /* x += o_proj(attention) */
        for (int64_t n = 0; n < d; n++) x[n] += tmp[n];
        rms_norm(x, w[3], eps, d, h);
        mv(h, d, 2 * dff, w[4], gu, 0, 2 * dff);  /* gate and up, then silu(gate) * up */
        for (int64_t n = 0; n < dff; n++) act[n] = gu[n] / (1.0f + expf(-gu[n])) * gu[dff + n];
        mv(act, dff, d, w[5], tmp, 0, d);  /* x += down(act) */
        for (int64_t n = 0; n < d; n++) x[n] += tmp[n];
    }
    rms_norm(x, wp[6 * L], eps, d, h);
    mv(h, d, vocab, wp[6 * L + 1], logits, 0, vocab);
    free(s);
}

/* y (N) = x (K) @ W (K, N), W row-major: the step's matrix-vector product alone. */
void matvec(const float *x, int64_t K, int64_t N, const float *W, float *y) { mv(x, K, N, W, y, 0, N); }
"""

_lib = None
_lock = threading.Lock()
_off = 0  # > 0 inside disabled()
_MAX_HEAD_DIM = 1024  # the kernel's rotation uses a buffer of this size


def _library() -> ctypes.CDLL | None:
    """The compiled step, or None where it cannot be built (no compiler: the model's own path runs)."""
    global _lib
    with _lock:
        if _lib is None:
            from anatomy.packed import compiled

            try:
                lib = compiled(_SOURCE, "decode-step")
            except (RuntimeError, OSError):
                _lib = False
                return None
            ptr, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.decode_step.argtypes = [ptr, i64, ctypes.c_float, i64, i64, ptr, ptr, i64, i64, ptr, ptr, ptr]
            lib.decode_step.argtypes += [ptr, ptr]
            lib.matvec.argtypes = [ptr, i64, i64, ptr, ptr]
            lib.decode_step.restype = lib.matvec.restype = None
            _lib = lib
        return _lib or None


@contextlib.contextmanager
def disabled():
    """Within this block every model runs its textbook path, one-token calls too (to compare or time the
    two paths; process-wide, so not meant for one thread among several)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for one row ``x`` (in,) and an input-major ``weight`` (out, in) (memory (in, out)),
    with the step's kernel: what :func:`step` uses for every weight matrix. float32 CPU tensors only."""
    from anatomy._checks import check_tensor

    check_tensor("x", x, kind="float", dim=1)
    check_tensor("weight", weight, kind="float", dim=2)
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise TypeError(f"x and weight must be float32, got {x.dtype} and {weight.dtype}")
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError(f"x and weight must be CPU tensors, got {x.device} and {weight.device}")
    out, n_in = weight.shape
    if x.shape[0] != n_in:
        raise ValueError(f"x must have weight's in_features {n_in} elements, got {x.shape[0]}")
    if weight.stride() != (1, out):
        raise ValueError(f"weight must be input-major (stride (1, {out})), got stride {weight.stride()}")
    lib = _library()
    if lib is None:
        raise RuntimeError("the decoding kernel could not be built (no C compiler)")
    x = x.contiguous()
    y = torch.empty(out)
    lib.matvec(x.data_ptr(), n_in, out, weight.data_ptr(), y.data_ptr())
    return y


_QKV, _GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
_LINEARS = (("self_attn", _QKV + ("o_proj",)), ("mlp", _GATE_UP + ("down_proj",)))


def _unhooked(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks)


def _plain_llama(model: nn.Module, kinds) -> bool:
    """Whether the model's stack is the plain Llama-style one the kernel computes: no module replaced by
    another kind, no bias, no forward hook."""
    block_t, attn_t, mlp_t, norm_t = kinds
    for block in model._modules["layers"]._modules.values():
        if type(block) is not block_t or not _unhooked(block):
            return False
        sub = block._modules
        if set(sub) != {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}:
            return False  # e.g. a cross-attention
        for name in ("input_layernorm", "post_attention_layernorm"):
            if type(sub[name]) is not norm_t or not _unhooked(sub[name]):
                return False
        for name, linears in _LINEARS:
            owner = sub[name]
            if type(owner) is not (attn_t if name == "self_attn" else mlp_t) or not _unhooked(owner):
                return False
            if set(owner._modules) != set(linears):  # e.g. a packed qkv_proj (anatomy.packed)
                return False
            for lin in linears:
                m = owner._modules[lin]
                if type(m) is not nn.Linear or m._parameters["bias"] is not None or not _unhooked(m):
                    return False
    return all(
        model._modules.get(name) is not None and _unhooked(model._modules[name])
        for name in ("norm", "lm_head", "embed_tokens")
    )


def _eligible_config(c) -> bool:
    return (
        c.mask == "causal"
        and c.pos == "rope"
        and c.norm == "rms"
        and c.norm_position == "pre"
        and c.mlp == "swiglu"
        and c.lm_head
        and c.final_norm
        and not (c.embed_norm or c.n_token_types or c.qkv_bias or c.out_bias or c.mlp_bias)
        and c.attn_backend != "triton"
        and c.head_dim <= _MAX_HEAD_DIM
    )


def _input_major(w: torch.Tensor) -> bool:
    return (
        w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2 and w.stride() == (1, w.shape[0])
    )


class _Plan:
    """The kernel's table of weight pointers for one model, and what must hold for it to stay valid."""

    def __init__(self, model: nn.Module, keep: list, eps: float) -> None:
        c = model.config
        self.shape = (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.n_layers, c.vocab_size)
        self.dims = torch.tensor(self.shape, dtype=torch.int64)
        self.keep = keep  # the tensors whose memory the table points into
        self.table = torch.tensor([w.data_ptr() for w in keep], dtype=torch.int64)
        self.eps = eps
        layers = list(model.layers)
        self.parents = [model, model.layers, *layers, *(m for b in layers for m in (b.self_attn, b.mlp))]
        self.children = [tuple(p._modules.values()) for p in self.parents]
        self.modules = [m for p in self.parents[2:] for m in p._modules.values()] + self.parents[2:]
        self.weighted = [m for m in self.modules if "weight" in m._parameters] + [model.norm, model.lm_head]
        self.ptrs = self._ptrs()

    def _ptrs(self) -> list:
        return [m._parameters["weight"].data_ptr() for m in self.weighted] + [
            m._parameters.get("bias") is None for m in self.weighted
        ]

    def valid(self, model: nn.Module) -> bool:
        """The same modules in the same places, no forward hooks on them, every weight where it was."""
        c = model.config
        return (
            (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.n_layers, c.vocab_size) == self.shape
            and self.parents[0] is model
            and [tuple(p._modules.values()) for p in self.parents] == self.children
            and not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)
            and self._ptrs() == self.ptrs
        )


def _plan(model: nn.Module) -> _Plan | None:
    """The model's :class:`_Plan`, built on first use and again when a weight or module changed; or None."""
    plan = model.__dict__.get("_decode_plan")
    if plan is not None and plan.valid(model):
        return plan
    from anatomy.model import MLP, Attention, Block, RMSNorm
    from anatomy.weight_layout import fused_weight

    model.__dict__.pop("_decode_plan", None)
    if not _plain_llama(model, (Block, Attention, MLP, RMSNorm)):
        return None
    keep = []
    with torch.no_grad():  # fused_weight's inference buffer (under autograd it would concatenate)
        for block in model.layers:
            attn, mlp = block.self_attn, block.mlp
            keep += [block.input_layernorm.weight, fused_weight(attn, _QKV)[0], attn.o_proj.weight]
            keep += [
                block.post_attention_layernorm.weight,
                fused_weight(mlp, _GATE_UP)[0],
                mlp.down_proj.weight,
            ]
    keep += [model.norm.weight, model.lm_head.weight]
    norms = keep[0::6][:-1] + keep[3::6] + [model.norm.weight]
    if not all(_input_major(w) for w in keep if w.dim() == 2) or not all(
        n.dtype == torch.float32 and n.device.type == "cpu" and n.is_contiguous() for n in norms
    ):
        return None
    emb = model.embed_tokens.weight
    if emb.dtype != torch.float32 or emb.device.type != "cpu":
        return None
    eps = {float(b.input_layernorm.eps) for b in model.layers} | {
        float(b.post_attention_layernorm.eps) for b in model.layers
    }
    if len(eps | {float(model.norm.eps)}) != 1:
        return None
    plan = model.__dict__["_decode_plan"] = _Plan(model, keep, eps.pop())
    return plan


def step(model: nn.Module, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
    """Logits (1, 1, vocab) of the one token ``input_ids`` (1, 1) after the ``cache``'s tokens, which it
    appends to the cache (keys, values and the token); None if this path does not apply (see the module's
    docstring), and then nothing has changed. For :class:`anatomy.model.Transformer`, after it has checked
    ``input_ids`` and ``cache``."""
    if (
        _off
        or input_ids.shape != (1, 1)
        or torch.is_grad_enabled()
        or input_ids.device.type != "cpu"
        or cache.dtype != torch.float32
        or cache.device.type != "cpu"
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or not _eligible_config(model.config)
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    plan = _plan(model)
    if plan is None:
        return None
    c = model.config
    pos = len(cache)
    cache._reserve(pos + 1)
    kv = cache.__dict__.get("_decode_kv")
    if kv is None or kv[0] is not cache._k:
        ptrs = [t.data_ptr() for pair in zip(cache._k, cache._v) for t in pair]
        kv = cache.__dict__["_decode_kv"] = (cache._k, torch.tensor(ptrs, dtype=torch.int64))
    rope = model.rope(pos, 1, "cpu", torch.float32)
    emb = model.embed_tokens.weight
    buf = torch.empty(3 * c.d_model + (2 * c.n_heads + 2 * c.n_kv_heads) * c.head_dim + 3 * c.d_ff)
    logits = torch.empty(1, 1, c.vocab_size)
    lib.decode_step(
        plan.dims.data_ptr(),
        cache._capacity,
        plan.eps,
        int(input_ids[0, 0]),
        pos,
        plan.table.data_ptr(),
        emb.data_ptr(),
        emb.stride(0),
        emb.stride(1),
        kv[1].data_ptr(),
        rope.cos.data_ptr(),
        rope.sin_signed.data_ptr(),
        buf.data_ptr(),
        logits.data_ptr(),
    )
    cache.commit(input_ids)
    return logits
