"""The decoding step of a Llama-style decoder (one to 16 new tokens with a KV cache) as one C call.

Decoding runs the model on one new token at a time. Its arithmetic is a row vector times every weight
matrix (~538 MB of float32 weights for SmolLM2-135M, streamed from memory once per token) plus a few hundred
small operations (norms, rotary positions, the cache append, attention over the cache, SwiGLU, residual
adds). Through PyTorch, each small operation costs a few microseconds of dispatch (~7 ms per token in all),
and MKL's matrix-vector product streams the weights at about half of what the memory can deliver.
:func:`step` computes the same step in one call of a small C kernel (built once with the system's ``cc``
through :func:`anatomy.packed.compiled`): the products stream the input-major weights
(:func:`anatomy.weight_layout.to_input_major`) row by row, and the small operations run in between
without leaving C. A call of a few tokens (speculative decoding checks its drafts that way) streams the
weights once for all of them; each token's numbers are bit for bit those of feeding it alone. It runs on
one thread whatever ``torch.get_num_threads()`` says: one core already streams the weights near the
memory's speed here (a second adds ~15% to a plain read), and keeping two threads in step costs ~180 waits
per token, each a stall of milliseconds whenever the other thread is descheduled (on this shared 2-core
machine a 2-thread step was slower than a 1-thread one).

:class:`anatomy.model.Transformer` calls :func:`step` for a call of at most :data:`MAX_TOKENS` tokens with a
cache (what :func:`anatomy.generate` does after the prompt) and uses its result when it is not None. It is
None, and the model runs its textbook path, unless everything below holds: float32 weights on the CPU in
the input-major layout, of the shapes the config gives, a causal pre-norm decoder with RMSNorm, RoPE, SwiGLU
and no biases (SmolLM2, Llama), batch 1, no autograd (inference), no forward hooks, no dispatch or function
mode (an op counter or tracer sees the textbook path's operations), and a C compiler was found. The
numbers are the model's up to the order of the sums (``tests/test_decode.py`` compares logits, caches and
greedy tokens with the textbook path); :func:`disabled` switches the step off."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import weakref

import torch
import torch.nn as nn

from anatomy.cache import KVCache

__all__ = ["MAX_TOKENS", "disabled", "matmul", "step"]

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

/* y (M, N) = x (M, K) @ W (K, N) for W row-major (the input-major layout): W streamed in memory order,
   4 rows at a time (plain C that the compiler vectorises for the CPU it runs on: -march=native; it streamed
   faster here than hand-written AVX-512). Every y[m, n] is summed in the same order whatever M and the
   blocking: y = x[0] w[0] + ... + x[3] w[3], then y += x[4] w[4] + ... +
   x[7] w[7], and so on (fused multiply-adds where the CPU has them): a row's result does not depend on the
   other rows. One row streams whole rows of W; several go 256 columns at a time (y's block stays cached). */
static void mm(const float *restrict x, int64_t M, int64_t K, int64_t N, const float *restrict W,
               float *restrict y) {
    const int64_t block = M == 1 ? N : 256;
    for (int64_t c0 = 0; c0 < N; c0 += block) {
        const int64_t c1 = c0 + block < N ? c0 + block : N;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4) {
            const float *w = W + k * N;
            for (int64_t r = 0; r < M; r++) {  /* the compiler vectorises the loop over n */
                const float x0 = x[r * K + k], x1 = x[r * K + k + 1], x2 = x[r * K + k + 2];
                const float x3 = x[r * K + k + 3];
                float *yr = y + r * N;
                for (int64_t n = c0; n < c1; n++) {
                    float s = x0 * w[n];
                    s += x1 * w[N + n];
                    s += x2 * w[2 * N + n];
                    s += x3 * w[3 * N + n];
                    yr[n] = k ? yr[n] + s : s;
                }
            }
        }
        for (; k < K; k++)
            for (int64_t r = 0; r < M; r++)
                for (int64_t n = c0; n < c1; n++) {
                    const float p = x[r * K + k] * W[k * N + n];
                    y[r * N + n] = k ? y[r * N + n] + p : p;
                }
    }
}

static void rms_norm(const float *x, const float *w, float eps, int64_t d, float *out) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * x[i];
    const float inv = (float)(1.0 / sqrt(ss / d + eps));
    for (int64_t i = 0; i < d; i++) out[i] = (x[i] * inv) * w[i];
}

/* sum a[i] b[i] in 16 lanes (one vector register where there are 16 floats), then the lanes pairwise. */
static inline float dot(const float *a, const float *b, int64_t n) {
    float lane[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int u = 0; u < 16; u++) lane[u] += a[i + u] * b[i + u];
    for (; i < n; i++) lane[i % 16] += a[i] * b[i];
    for (int w = 8; w > 0; w /= 2)
        for (int u = 0; u < w; u++) lane[u] += lane[u + w];
    return lane[0];
}

/* x * cos + roll(x, hd / 2) * sin_signed, in place on one head (the model's _rotate). */
static void rope(float *x, const float *cs, const float *sn, int64_t hd) {
    float tmp[1024];
    const int64_t h = hd / 2;
    for (int64_t i = 0; i < hd; i++) tmp[i] = x[i] * cs[i] + x[i < h ? i + h : i - h] * sn[i];
    for (int64_t i = 0; i < hd; i++) x[i] = tmp[i];
}

/* M new tokens `toks` at positions pos.., every layer, the final norm and the LM head of the last nlog.
   dims: d, n_heads, n_kv_heads, head_dim, d_ff, n_layers, vocab; cap: the cache's capacity.
   wp: per layer 6 pointers: input norm, qkv (d, (Hq + 2 Hkv) hd), o (Hq hd, d), post norm,
   gate_up (d, 2 dff), down (dff, d); then the final norm and the LM head (d, vocab). emb: the embedding
   table, element (t, i) at emb[t * es0 + i * es1]. kv: per layer the key and value cache (Hkv, cap, hd).
   cs, sn: the rotation of each new position (M, hd). buf: scratch of M (3 d + (2 Hq + 2 Hkv) hd + 3 dff)
   floats. logits: (nlog, vocab). Returns 0, or 1 when out of memory. */
int decode_step(const int64_t *dims, int64_t cap, float eps, const int64_t *toks, int64_t M, int64_t pos,
                const float *const *wp, const float *emb, int64_t es0, int64_t es1, float *const *kv,
                const float *cs, const float *sn, float *buf, int64_t nlog, float *logits) {
    const int64_t d = dims[0], hq = dims[1], hkv = dims[2], hd = dims[3], dff = dims[4];
    const int64_t L = dims[5], vocab = dims[6];
    const int64_t nqkv = (hq + 2 * hkv) * hd, group = hq / hkv;
    float *x = buf, *h = x + M * d, *qkv = h + M * d, *att = qkv + M * nqkv, *gu = att + M * hq * hd;
    float *act = gu + M * 2 * dff, *tmp = act + M * dff;
    const float scale = 1.0f / sqrtf((float)hd);
    float *s = malloc(sizeof(float) * (pos + M));
    if (s == NULL) return 1;
    for (int64_t r = 0; r < M; r++)
        for (int64_t i = 0; i < d; i++) x[r * d + i] = emb[toks[r] * es0 + i * es1];
    for (int64_t l = 0; l < L; l++) {
        const float *const *w = wp + 6 * l;
        float *kc = kv[2 * l], *vc = kv[2 * l + 1];
        for (int64_t r = 0; r < M; r++) rms_norm(x + r * d, w[0], eps, d, h + r * d);
        mm(h, M, d, nqkv, w[1], qkv);
        for (int64_t r = 0; r < M; r++) {
            float *row = qkv + r * nqkv;
            for (int64_t i = 0; i < hq + hkv; i++) rope(row + i * hd, cs + r * hd, sn + r * hd, hd);
            for (int64_t g = 0; g < hkv; g++)  /* append k and v to the cache */
                for (int64_t i = 0; i < hd; i++) {
                    kc[(g * cap + pos + r) * hd + i] = row[(hq + g) * hd + i];
                    vc[(g * cap + pos + r) * hd + i] = row[(hq + hkv + g) * hd + i];
                }
        }
        for (int64_t r = 0; r < M; r++)  /* softmax(q k / sqrt(hd)) v over the keys up to its position */
            for (int64_t head = 0; head < hq; head++) {
                const float *q = qkv + r * nqkv + head * hd, *K = kc + (head / group) * cap * hd;
                const float *V = vc + (head / group) * cap * hd;
                const int64_t len = pos + r + 1;
                float *o = att + (r * hq + head) * hd, m = -INFINITY, z = 0.0f;
                for (int64_t j = 0; j < len; j++) {
                    s[j] = dot(q, K + j * hd, hd) * scale;
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
        mm(att, M, hq * hd, d, w[2], tmp);  /* x += o_proj(attention) */
        for (int64_t i = 0; i < M * d; i++) x[i] += tmp[i];
        for (int64_t r = 0; r < M; r++) rms_norm(x + r * d, w[3], eps, d, h + r * d);
        mm(h, M, d, 2 * dff, w[4], gu);  /* gate and up, then silu(gate) * up */
        for (int64_t r = 0; r < M; r++)
            for (int64_t n = 0; n < dff; n++) {
                const float g = gu[r * 2 * dff + n];
                act[r * dff + n] = g / (1.0f + expf(-g)) * gu[r * 2 * dff + dff + n];
            }
        mm(act, M, dff, d, w[5], tmp);  /* x += down(act) */
        for (int64_t i = 0; i < M * d; i++) x[i] += tmp[i];
    }
    for (int64_t r = M - nlog; r < M; r++) rms_norm(x + r * d, wp[6 * L], eps, d, h + r * d);
    mm(h + (M - nlog) * d, nlog, d, vocab, wp[6 * L + 1], logits);
    free(s);
    return 0;
}

/* y (M, N) = x (M, K) @ W (K, N), W row-major: the step's matrix product alone. */
void matmul(const float *x, int64_t M, int64_t K, int64_t N, const float *W, float *y) {
    mm(x, M, K, N, W, y);
}
"""

_lib = None
_lock = threading.Lock()
_off = 0  # > 0 inside disabled()
_MAX_HEAD_DIM = 1024  # the kernel's rotation uses a buffer of this size
MAX_TOKENS = 16  # calls of up to this many new tokens take the step (decoding; speculative verification)


def _library() -> ctypes.CDLL | None:
    """The compiled step, or None where it cannot be built (no compiler: the model's own path runs)."""
    global _lib
    with _lock:
        if _lib is None:
            from anatomy.packed import compiled

            try:
                lib = compiled(_SOURCE, "decode-step", openmp=False)
            except (RuntimeError, OSError):
                _lib = False
                return None
            ptr, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.decode_step.argtypes = [ptr, i64, ctypes.c_float, ptr, i64, i64, ptr, ptr, i64, i64, ptr]
            lib.decode_step.argtypes += [ptr, ptr, ptr, i64, ptr]
            lib.decode_step.restype = ctypes.c_int
            lib.matmul.argtypes = [ptr, i64, i64, i64, ptr, ptr]
            lib.matmul.restype = None
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


def matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for rows ``x`` (in,) or (M, in) and an input-major ``weight`` (out, in) (memory
    (in, out)), with the step's kernel: what :func:`step` uses for every weight matrix. float32 CPU only."""
    from anatomy._checks import check_tensor

    check_tensor("x", x, kind="float")
    check_tensor("weight", weight, kind="float", dim=2)
    if x.dim() not in (1, 2):
        raise ValueError(f"x must have shape (in,) or (M, in), got {tuple(x.shape)}")
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise TypeError(f"x and weight must be float32, got {x.dtype} and {weight.dtype}")
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError(f"x and weight must be CPU tensors, got {x.device} and {weight.device}")
    out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x must have weight's in_features {n_in} in its last dim, got {tuple(x.shape)}")
    if weight.stride() != (1, out):
        raise ValueError(f"weight must be input-major (stride (1, {out})), got stride {weight.stride()}")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        raise ValueError(
            "x and weight must not require grad (decode.matmul has no backward): call it under "
            "torch.no_grad() or pass detached tensors"
        )
    lib = _library()
    if lib is None:
        raise RuntimeError("the decoding kernel could not be built (no C compiler)")
    f32 = dict(dtype=torch.float32, device="cpu")  # whatever torch's default dtype and device
    if n_in == 0:  # a sum of no products is 0
        return torch.zeros(*x.shape[:-1], out, **f32)
    rows = x.reshape(-1, n_in).contiguous()
    y = torch.empty(rows.shape[0], out, **f32)
    if rows.shape[0]:
        lib.matmul(rows.data_ptr(), rows.shape[0], n_in, out, weight.data_ptr(), y.data_ptr())
    return y.view(*x.shape[:-1], out)


_QKV, _GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
_LINEARS = (("self_attn", _QKV + ("o_proj",)), ("mlp", _GATE_UP + ("down_proj",)))


def _unhooked(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks)


# The model's own modules that the kernel computes besides its blocks, in the order _plain_llama checks them
_TOP = ("norm", "lm_head", "embed_tokens")


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
    # the final norm, the head and the embedding are what the kernel computes too (a LayerNorm, a head with
    # a bias, an Identity put in their place, or an Embedding that renormalises its rows, would not be)
    final = [model._modules.get(name) for name in _TOP]
    return (
        all(m is not None and _unhooked(m) for m in final)
        and type(final[0]) is norm_t
        and type(final[1]) is nn.Linear
        and final[1]._parameters.get("bias") is None
        and type(final[2]) is nn.Embedding
        and final[2].max_norm is None
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


def _input_major(w: torch.Tensor, shape: tuple[int, int]) -> bool:
    """A float32 CPU weight of ``shape`` (out, in) stored input-major (memory (in, out))."""
    return (
        w.dtype == torch.float32
        and w.device.type == "cpu"
        and tuple(w.shape) == shape
        and w.stride() == (1, shape[0])
    )


def _norms(model: nn.Module) -> list:
    return [n for b in model.layers for n in (b.input_layernorm, b.post_attention_layernorm)] + [model.norm]


def _dims(c) -> tuple:
    """The sizes the kernel is built around, in the order of its dims argument."""
    return (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.n_layers, c.vocab_size)


class _Plan:
    """The kernel's table of weight pointers for one model, and what must hold for it to stay valid."""

    def __init__(self, model: nn.Module, keep: list, eps: float) -> None:
        self.shape = _dims(model.config)
        self.dims = torch.tensor(self.shape, dtype=torch.int64)
        self.keep = keep  # the tensors whose memory the table points into
        self.table = torch.tensor([w.data_ptr() for w in keep], dtype=torch.int64)
        self.eps = eps
        layers = list(model.layers)
        # The model itself only by a weak reference: the plan lives in the model's __dict__, and a strong
        # one would make a cycle that keeps a dropped model's weights (540 MB for SmolLM2) in memory until
        # the cyclic garbage collector happens to run.
        self.model = weakref.ref(model)
        self.parents = [model.layers, *layers, *(m for b in layers for m in (b.self_attn, b.mlp))]
        self.children = self._children(model)
        # every module whose forward the step replaces, the top-level ones too (a hook on any of them must
        # run: the plan is dropped and the textbook path taken)
        top = [model._modules[name] for name in _TOP]
        self.modules = [m for p in self.parents[1:] for m in p._modules.values()] + self.parents[1:] + top
        self.weighted = [m for m in self.modules if "weight" in m._parameters] + [model.norm, model.lm_head]
        self.norms = _norms(model)
        self.ptrs = self._ptrs()

    def _ptrs(self) -> list:
        """Where every weight is (address, shape, strides: a view of the same memory may start at the same
        address), whether each Linear still has no bias, and every norm's eps."""
        weights = [m._parameters["weight"] for m in self.weighted]
        return (
            [(w.data_ptr(), w.shape, w.stride()) for w in weights]
            + [m._parameters.get("bias") is None for m in self.weighted]
            + [n.eps for n in self.norms]
        )

    def _children(self, model: nn.Module) -> list:
        """The modules held by the model and by each of :attr:`parents`, in place order."""
        return [tuple(model._modules.values())] + [tuple(p._modules.values()) for p in self.parents]

    def valid(self, model: nn.Module) -> bool:
        """The same modules in the same places, no forward hooks on them, every weight where it was."""
        return (
            _dims(model.config) == self.shape
            and self.model() is model
            and self._children(model) == self.children
            and all(_unhooked(m) for m in self.modules)
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
    c = model.config
    if len(model.layers) != c.n_layers or not _plain_llama(model, (Block, Attention, MLP, RMSNorm)):
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
    # Every matrix must have the shape the config gives the kernel (a Linear swapped for a narrower one, e.g.
    # pruned neurons, would make it read past the weight's memory) and lie input-major.
    d, hd, dff = c.d_model, c.head_dim, c.d_ff
    shapes = [((c.n_heads + 2 * c.n_kv_heads) * hd, d), (d, c.n_heads * hd), (2 * dff, d), (d, dff)]
    mats = [w for i, w in enumerate(keep[:-2]) if i % 6 not in (0, 3)] + [keep[-1]]
    expected = shapes * c.n_layers + [(c.vocab_size, d)]
    norms = [n.weight for n in _norms(model)]
    if not all(_input_major(w, shape) for w, shape in zip(mats, expected)) or not all(
        n.dtype == torch.float32 and n.device.type == "cpu" and n.shape == (d,) and n.is_contiguous()
        for n in norms
    ):
        return None
    if not _embedding_ok(model.embed_tokens.weight, c):
        return None
    eps = {float(n.eps) for n in _norms(model)}
    if len(eps) != 1:
        return None
    plan = model.__dict__["_decode_plan"] = _Plan(model, keep, eps.pop())
    return plan


def _head_input_major(model: nn.Module) -> bool:
    """Whether the LM head's weight is stored input-major: what every model the step can take has, checked
    first because it is cheap (a model in the usual layout costs this step ~2 us per call, not ~70 us)."""
    head = model._modules.get("lm_head")
    w = head._parameters.get("weight") if isinstance(head, nn.Linear) else None
    return w is not None and w.dim() == 2 and w.stride() == (1, w.shape[0])


def _embedding_ok(emb: torch.Tensor, c) -> bool:
    """The embedding table the kernel reads rows of: float32 on the CPU, (vocab, d) (any strides)."""
    return emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == (c.vocab_size, c.d_model)


def _may_run(model: nn.Module, input_ids: torch.Tensor, cache: KVCache) -> bool:
    """What the C step and :mod:`anatomy.prefill`'s path both need, apart from the number of new tokens:
    switched on, inference, CPU float32, no global hook, no dispatch or function mode, and a model whose
    config and LM head they compute (cheap checks only: the walk of :func:`_plan` comes after)."""
    return not (
        _off
        or torch.is_grad_enabled()
        or input_ids.device.type != "cpu"
        or cache.dtype != torch.float32
        or cache.device.type != "cpu"
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        # a dispatch or function mode (an op counter, a fake-tensor trace, torch.device(...) as a context)
        # would not see the fast paths' work: the textbook path's operations run under it instead
        or torch._C._len_torch_dispatch_stack()
        or torch._C._len_torch_function_stack()
        or not _eligible_config(model.config)
        or not _head_input_major(model)  # most models are not: refused here, before the walk of _plan
    )


def step(
    model: nn.Module, input_ids: torch.Tensor, cache: KVCache, logits_to_keep: int = 0
) -> torch.Tensor | None:
    """Logits (1, n, vocab) of the new tokens ``input_ids`` (1, N), N <= :data:`MAX_TOKENS`, after the
    ``cache``'s tokens, which it appends to the cache (keys, values and the tokens); n = ``logits_to_keep``
    (the last n positions) or N if 0. None if this path does not apply (see the module's docstring), and then
    nothing has changed. For :class:`anatomy.model.Transformer`, after it has checked its arguments."""
    if (
        input_ids.dim() != 2
        or input_ids.shape[0] != 1
        or not 1 <= input_ids.shape[1] <= MAX_TOKENS
        or not _may_run(model, input_ids, cache)
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    plan = _plan(model)
    if plan is None:
        return None
    c = model.config
    emb = model.embed_tokens.weight  # read live: checked on every call
    if not _embedding_ok(emb, c):
        return None
    n, pos = input_ids.shape[1], len(cache)
    keep = logits_to_keep or n
    cache._reserve(pos + n)
    # The table of the cache's buffers, kept while they stay where they are. Keyed by the addresses, not by
    # the list: a copy of the cache (copy.deepcopy, pickling) shares a copied table with its own buffers.
    ptrs = [t.data_ptr() for pair in zip(cache._k, cache._v) for t in pair]
    kv = cache.__dict__.get("_decode_kv")
    if kv is None or kv[0] != ptrs:
        kv = cache.__dict__["_decode_kv"] = (ptrs, torch.tensor(ptrs, dtype=torch.int64))
    rope = model.rope(pos, n, "cpu", torch.float32)
    toks = input_ids.to(torch.int64).contiguous()
    f32 = dict(dtype=torch.float32, device="cpu")  # what the kernel writes, whatever torch's defaults say
    buf = torch.empty(
        n * (3 * c.d_model + (2 * c.n_heads + 2 * c.n_kv_heads) * c.head_dim + 3 * c.d_ff), **f32
    )
    logits = torch.empty(1, keep, c.vocab_size, **f32)
    failed = lib.decode_step(
        plan.dims.data_ptr(),
        cache._capacity,
        plan.eps,
        toks.data_ptr(),
        n,
        pos,
        plan.table.data_ptr(),
        emb.data_ptr(),
        emb.stride(0),
        emb.stride(1),
        kv[1].data_ptr(),
        rope.cos.data_ptr(),
        rope.sin_signed.data_ptr(),
        buf.data_ptr(),
        keep,
        logits.data_ptr(),
    )
    if failed:
        raise MemoryError("the decoding step could not allocate its attention scores")
    cache.commit(input_ids)
    return logits
