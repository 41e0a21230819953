"""Quantized weights kept packed for decoding: the GGUF's Q4_1 and Q8_0 blocks, multiplied as they are stored.

SmolLM2's GGUF stores its Linear weights in blocks of 32: Q4_1 as w = d * q + m (q in 0..15, d and m
float16) and Q8_0 as w = d * q (q in -128..127). :func:`anatomy.pretrained.smollm2` dequantizes them to
float32 once (the numbers transformers gets) and decoding then streams 4 bytes per weight. A
:class:`PackedLinear` keeps the blocks (0.75 bytes per Q4_1 weight, 1.125 per Q8_0 weight: the codes, and d
and m widened to float32) and multiplies a few rows of activations by them directly, with a small C kernel
compiled once on first use (``cc``, cached under :func:`anatomy.data.cache_dir`).

Exactness: d has 11 significant bits and q at most 8, so d * q is exact in float32 and d * q + m rounds
once: each weight the kernel uses is bit for bit the float32 weight transformers dequantizes
(``tests/test_packed.py`` checks every tensor, and the kernel's own arithmetic with one-hot inputs). Only
the order of the sums differs from a float32 matrix product, so logits agree to rounding, not bit for bit.

Opt-in only (``smollm2(packed=True)``): the teaching model and every chapter use float32 Linears.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from anatomy._checks import check_bool, check_choice, check_tensor
from anatomy.data import cache_dir
from anatomy.weight_layout import _forget_fused

__all__ = ["KINDS", "PackedLinear", "pack_llama_gguf"]

KINDS = ("q4_1", "q8_0")  # the GGUF block formats a PackedLinear holds
BLOCK = 32
_MAX_ROWS = 8  # more rows than this (a prompt): dequantize to float32 and use one matrix product

_SOURCE = r"""
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
/* y (M, N) = x (M, K) @ W.T for W (N, K) in blocks of 32 along K; weights dequantized as they stream.
   Q4_1: w = d * q + m, q = low nibbles of qs[0..15] then high nibbles; Q8_0: w = d * q. Each weight is
   formed exactly (d * q is exact in fp32, so fma(d, q, m) and d * q + m round alike), then multiplied
   and summed into 32 lane accumulators (vector registers, or an array the compiler vectorises), added at
   the end. */
static inline float finish(const float *acc) {
    float s = 0.0f;
    for (int j = 0; j < 32; j++) s += acc[j];
    return s;
}
static float q4_1_dot(const float *x, int64_t nb, const uint8_t *q, const float *d, const float *m) {
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    const __m128i low = _mm_set1_epi8(15);
    for (int64_t b = 0; b < nb; b++) {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(q + b * 16));
        const __m512 vd = _mm512_set1_ps(d[b]), vm = _mm512_set1_ps(m[b]);
        const __m128i l8 = _mm_and_si128(raw, low), h8 = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(l8));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(h8));
        a0 = _mm512_fmadd_ps(_mm512_fmadd_ps(vd, lo, vm), _mm512_loadu_ps(x + b * 32), a0);
        a1 = _mm512_fmadd_ps(_mm512_fmadd_ps(vd, hi, vm), _mm512_loadu_ps(x + b * 32 + 16), a1);
    }
    float acc[32];
    _mm512_storeu_ps(acc, a0);
    _mm512_storeu_ps(acc + 16, a1);
    return finish(acc);
#elif defined(__AVX2__)
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m128i low = _mm_set1_epi8(15);
    for (int64_t b = 0; b < nb; b++) {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(q + b * 16));
        const __m128i l8 = _mm_and_si128(raw, low), h8 = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
        const __m256 vd = _mm256_set1_ps(d[b]), vm = _mm256_set1_ps(m[b]);
        const __m128i parts[4] = {l8, _mm_srli_si128(l8, 8), h8, _mm_srli_si128(h8, 8)};
        for (int i = 0; i < 4; i++) {
            const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i]));
            a[i] = _mm256_fmadd_ps(_mm256_fmadd_ps(vd, qf, vm), _mm256_loadu_ps(x + b * 32 + 8 * i), a[i]);
        }
    }
    float acc[32];
    for (int i = 0; i < 4; i++) _mm256_storeu_ps(acc + 8 * i, a[i]);
    return finish(acc);
#else
    float acc[32] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const float db = d[b], mb = m[b];
        for (int j = 0; j < 16; j++) {
            acc[j] += (db * (float)(q[b * 16 + j] & 15) + mb) * x[b * 32 + j];
            acc[16 + j] += (db * (float)(q[b * 16 + j] >> 4) + mb) * x[b * 32 + 16 + j];
        }
    }
    return finish(acc);
#endif
}
static float q8_0_dot(const float *x, int64_t nb, const int8_t *q, const float *d) {
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m512 vd = _mm512_set1_ps(d[b]);
        const __m128i r0 = _mm_loadu_si128((const __m128i *)(q + b * 32));
        const __m128i r1 = _mm_loadu_si128((const __m128i *)(q + b * 32 + 16));
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(r0));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(r1));
        a0 = _mm512_fmadd_ps(_mm512_mul_ps(vd, q0), _mm512_loadu_ps(x + b * 32), a0);
        a1 = _mm512_fmadd_ps(_mm512_mul_ps(vd, q1), _mm512_loadu_ps(x + b * 32 + 16), a1);
    }
    float acc[32];
    _mm512_storeu_ps(acc, a0);
    _mm512_storeu_ps(acc + 16, a1);
    return finish(acc);
#else
    float acc[32] = {0};
    for (int64_t b = 0; b < nb; b++)
        for (int j = 0; j < 32; j++) acc[j] += (d[b] * (float)q[b * 32 + j]) * x[b * 32 + j];
    return finish(acc);
#endif
}
void q4_1_mm(const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *qs, const float *d,
             const float *m, float *y, int nt) {
    const int64_t nb = K / 32;
    #pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < M; r++)
            y[r * N + n] = q4_1_dot(x + r * K, nb, qs + n * nb * 16, d + n * nb, m + n * nb);
}
void q8_0_mm(const float *x, int64_t M, int64_t K, int64_t N, const int8_t *qs, const float *d,
             float *y, int nt) {
    const int64_t nb = K / 32;
    #pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < M; r++) y[r * N + n] = q8_0_dot(x + r * K, nb, qs + n * K, d + n * nb);
}
void q4_1_dequant(int64_t K, int64_t N, const uint8_t *qs, const float *d, const float *m, float *w, int nt) {
    const int64_t nb = K / 32;
    #pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            const float db = d[n * nb + b], mb = m[n * nb + b];
            const uint8_t *qb = qs + (n * nb + b) * 16;
            float *wb = w + n * K + b * 32;
            for (int j = 0; j < 16; j++) {
                wb[j] = db * (float)(qb[j] & 15) + mb;
                wb[16 + j] = db * (float)(qb[j] >> 4) + mb;
            }
        }
}
void q8_0_dequant(int64_t K, int64_t N, const int8_t *qs, const float *d, float *w, int nt) {
    const int64_t nb = K / 32;
    #pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) w[n * K + k] = d[n * nb + k / 32] * (float)qs[n * K + k];
}
"""
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_lib = None
_lock = threading.Lock()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), os.uname().machine)
    except OSError:
        return os.uname().machine + platform.processor()


def compiled(source: str, stem: str, openmp: bool = True) -> ctypes.CDLL:
    """``source`` (C) built once per machine with the system's ``cc`` into a cached shared library, loaded.

    The file lives under :func:`anatomy.data.cache_dir`, named ``stem`` plus a hash of the source, the flags,
    the compiler and the CPU's feature flags (``-march=native``: a library built on another CPU, in a cache
    folder copied over, could hold instructions this one lacks). RuntimeError when there is no compiler or
    the build fails. Callers keep the library they get (one load per process). ``openmp=False`` builds
    without OpenMP (a library that never starts threads does not load a second OpenMP runtime beside
    PyTorch's).
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be C source code (a str), got {type(source).__name__}")
    if not isinstance(stem, str):
        raise TypeError(f"stem must be a str, got {type(stem).__name__}")
    if not stem or not all(ch.isalnum() or ch in "-_" for ch in stem):
        raise ValueError(f"stem must be a file name of letters, digits, '-' and '_', got {stem!r}")
    check_bool("openmp", openmp)
    flags = _FLAGS if openmp else [f for f in _FLAGS if f != "-fopenmp"]
    # CC may carry words of its own ("ccache gcc", "gcc -m64"), as make and setuptools allow
    try:
        compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    except ValueError as error:  # e.g. an unclosed quote
        raise RuntimeError(f"the environment variable CC is not a command: {error}") from error
    if compiler[0] is None:
        raise RuntimeError(f"{stem} needs a C compiler (cc or gcc) to build its kernel once")
    key = hashlib.sha256((source + " ".join(flags) + " ".join(compiler) + _cpu_flags()).encode())
    path = cache_dir() / f"{stem}-{key.hexdigest()[:16]}.so"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            src, out = os.path.join(tmp, "kernels.c"), os.path.join(tmp, "kernels.so")
            with open(src, "w") as f:
                f.write(source)
            try:
                done = subprocess.run([*compiler, *flags, src, "-o", out], capture_output=True, text=True)
            except OSError as error:  # CC names no program
                raise RuntimeError(f"building {stem} failed: {error}") from error
            if done.returncode:
                raise RuntimeError(f"building {stem} failed:\n{done.stderr[-2000:]}")
            os.replace(out, path)  # atomic: another process may be building the same file
        _prune(stem, path)
    else:
        with contextlib.suppress(OSError):  # the age _prune goes by is the last use, not the build
            os.utime(path)
    return ctypes.CDLL(str(path))


KEEP_BUILDS = 4  # libraries kept per stem: a changed source (or compiler, or CPU) builds a new one


def _prune(stem: str, built: Path) -> None:
    """Delete all but the :data:`KEEP_BUILDS` most recently used libraries of ``stem`` (the one just
    ``built`` always stays): each change of a kernel's source leaves its old build behind, and nothing
    else removes them. A process that has an old one loaded keeps it (deleting a loaded file is safe)."""
    pattern = re.compile(re.escape(stem) + r"-[0-9a-f]{16}\.so")
    try:
        old = [p for p in built.parent.iterdir() if pattern.fullmatch(p.name) and p != built]
        old.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:  # another process pruned a file meanwhile: leave the rest for a later build
        return
    for p in old[KEEP_BUILDS - 1 :]:
        with contextlib.suppress(OSError):
            p.unlink()


def _library() -> ctypes.CDLL:
    """The compiled kernels (built once per machine and source, cached as a shared library)."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        lib = compiled(_SOURCE, "packed-kernels")
        i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        lib.q4_1_mm.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, i32]
        lib.q8_0_mm.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i32]
        lib.q4_1_dequant.argtypes = [i64, i64, ptr, ptr, ptr, ptr, i32]
        lib.q8_0_dequant.argtypes = [i64, i64, ptr, ptr, ptr, i32]
        for fn in (lib.q4_1_mm, lib.q8_0_mm, lib.q4_1_dequant, lib.q8_0_dequant):
            fn.restype = None
        _lib = lib
        return lib


_local = threading.local()


def _scratch(numel: int) -> torch.Tensor:
    """A float32 buffer of ``numel`` reused by this thread's prompt-sized calls (no fresh pages each call).

    Every Linear of a prompt dequantizes its weight into it just before its one matrix product, so one
    buffer of the largest size serves them all.
    """
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):
            buf = _local.buf = torch.empty(numel)
    return buf[:numel]


class PackedLinear(nn.Module):
    """``y = x @ W.T`` (no bias) with W (out, in) kept in GGUF blocks of 32 along ``in``.

    kind "q4_1": ``codes`` (out, in / 2) uint8 as the GGUF stores them (per block, 16 bytes: weight j in
    the low nibble of byte j, weight j + 16 in its high nibble), ``scales`` and ``mins`` (out, in / 32)
    float32 (the float16 d and m, widened exactly). kind "q8_0": ``codes`` (out, in) int8, ``scales``
    (out, in / 32), no ``mins``. Inputs are float32 (..., in); up to 8 rows at a time (decoding) go
    through the packed kernel, more (a prompt) through one float32 matrix product with
    :meth:`dequantize`'s weights.
    """

    def __init__(
        self, kind: str, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None
    ):
        super().__init__()
        check_choice("kind", kind, KINDS)
        check_tensor("codes", codes, dim=2)
        want = torch.uint8 if kind == "q4_1" else torch.int8
        if codes.dtype != want:
            raise TypeError(f"codes must be {want} for kind {kind!r}, got {codes.dtype}")
        out_features, width = codes.shape
        in_features = 2 * width if kind == "q4_1" else width
        if in_features == 0 or in_features % BLOCK or out_features == 0:
            raise ValueError(
                f"codes must hold whole blocks of {BLOCK} weights per row, got shape {tuple(codes.shape)}"
            )
        check_tensor("scales", scales, kind="float", dim=2)
        if scales.shape != (out_features, in_features // BLOCK):
            raise ValueError(
                f"scales must have shape {(out_features, in_features // BLOCK)} for codes of shape "
                f"{tuple(codes.shape)}, got {tuple(scales.shape)}"
            )
        if kind == "q4_1":
            check_tensor("mins", mins, kind="float", dim=2)
            if mins.shape != scales.shape:
                raise ValueError(
                    f"mins must have the shape of scales {tuple(scales.shape)}, got {tuple(mins.shape)}"
                )
        elif mins is not None:
            raise ValueError("mins must be None for kind 'q8_0' (w = d * q)")
        self.kind, self.in_features, self.out_features = kind, in_features, out_features
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("mins", None if mins is None else mins.float().contiguous())

    def extra_repr(self) -> str:
        return f"{self.kind}, in_features={self.in_features}, out_features={self.out_features}"

    @classmethod
    def cat(cls, parts: list[PackedLinear]) -> PackedLinear:
        """One PackedLinear whose output rows are those of ``parts`` in order (e.g. q, k, v -> qkv)."""
        if not parts or not all(isinstance(p, PackedLinear) for p in parts):
            raise TypeError("parts must be a non-empty list of PackedLinear")
        if len({(p.kind, p.in_features) for p in parts}) != 1:
            raise ValueError("parts must share kind and in_features")
        mins = None if parts[0].mins is None else torch.cat([p.mins for p in parts])
        return cls(
            parts[0].kind, torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), mins
        )

    def _ptrs(self):
        return [t.data_ptr() for t in (self.codes, self.scales) + (() if self.mins is None else (self.mins,))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            raise TypeError(
                f"x must be a float32 torch.Tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}"
            )
        if x.dim() == 0 or x.shape[-1] != self.in_features or x.device.type != "cpu":
            raise ValueError(
                f"x must be a CPU tensor of shape (..., {self.in_features}), got {tuple(x.shape)} "
                f"on {x.device}"
            )
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > _MAX_ROWS:
            return F.linear(x, self._dequantize(_scratch(self.out_features * self.in_features)))
        rows = rows.contiguous()
        y = torch.empty(rows.shape[0], self.out_features)
        fn = _library().q4_1_mm if self.kind == "q4_1" else _library().q8_0_mm
        args = (
            rows.data_ptr(),
            rows.shape[0],
            self.in_features,
            self.out_features,
            *self._ptrs(),
            y.data_ptr(),
        )
        fn(*args, torch.get_num_threads())
        return y.view(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in) the kernel multiplies by: d * q + m (Q4_1) or d * q (Q8_0)."""
        return self._dequantize(torch.empty(self.out_features * self.in_features))

    def _dequantize(self, buffer: torch.Tensor) -> torch.Tensor:
        w = buffer.view(self.out_features, self.in_features)
        fn = _library().q4_1_dequant if self.kind == "q4_1" else _library().q8_0_dequant
        fn(self.in_features, self.out_features, *self._ptrs(), w.data_ptr(), torch.get_num_threads())
        return w


def _from_gguf(tensor) -> PackedLinear:
    """A PackedLinear from a ``gguf.GGUFReader`` tensor of type Q4_1 or Q8_0 (rows = output features)."""
    raw = torch.from_numpy(tensor.data.copy())  # (out, blocks * bytes per block), uint8
    kind = tensor.tensor_type.name.lower()
    if kind not in KINDS:
        raise ValueError(f"{tensor.name} is {tensor.tensor_type.name}, not one of {KINDS}")
    per_block = 20 if kind == "q4_1" else 34
    blocks = raw.view(raw.shape[0], -1, per_block)
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    if kind == "q4_1":
        m = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
        return PackedLinear(kind, blocks[..., 4:].reshape(raw.shape[0], -1), d, m)
    return PackedLinear(kind, blocks[..., 2:].contiguous().view(torch.int8).reshape(raw.shape[0], -1), d)


def _unpermute(p: PackedLinear, n_head: int) -> PackedLinear:
    """Undo llama.cpp's row order for q and k (transformers' ``_reverse_permute_weights``, on whole rows)."""
    n = p.out_features
    idx = torch.arange(n).reshape(n_head, n // n_head // 2, 2).transpose(1, 2).reshape(n)
    mins = None if p.mins is None else p.mins[idx]
    return PackedLinear(p.kind, p.codes[idx], p.scales[idx], mins)


@torch.no_grad()
def pack_llama_gguf(model: nn.Module, gguf_path: str | os.PathLike) -> nn.Module:
    """Replace the Linears of a Llama-family anatomy ``Transformer`` loaded from ``gguf_path`` by packed ones.

    q/k/v become one ``self_attn.qkv_proj`` and gate/up one ``mlp.gate_up_proj`` (the model runs them as
    one product, as it does the float32 ones); o_proj, down_proj and the LM head (Q8_0, tied to the
    embeddings, which stay float32) become PackedLinears of their own. Every tensor must be Q4_1 or Q8_0
    and of the Linear's shape, else ValueError. Returns ``model``, changed in place (inference only).
    """
    from gguf import GGUFReader

    from anatomy.model import Transformer

    if not isinstance(model, Transformer) or model.config.mask != "causal" or not model.config.lm_head:
        raise TypeError(f"model must be an anatomy decoder Transformer, got {type(model).__name__}")
    if not isinstance(gguf_path, (str, os.PathLike)) or not os.path.isfile(gguf_path):
        raise ValueError(f"gguf_path must be the path of a GGUF file, got {gguf_path!r}")
    try:
        tensors = {t.name: t for t in GGUFReader(str(gguf_path)).tensors}
    except (ValueError, OSError, KeyError, IndexError) as error:
        raise ValueError(f"gguf_path {str(gguf_path)!r} is not a readable GGUF file ({error})") from error
    c = model.config

    def packed(name: str, like: nn.Linear, n_head: int | None = None) -> PackedLinear:
        if name not in tensors:
            raise ValueError(f"the GGUF has no tensor {name!r}")
        p = _from_gguf(tensors[name])
        if (p.out_features, p.in_features) != tuple(like.weight.shape):
            raise ValueError(
                f"{name} has shape {(p.out_features, p.in_features)}, the model {tuple(like.weight.shape)}"
            )
        return p if n_head is None else _unpermute(p, n_head)

    for i, block in enumerate(model.layers):
        attn, mlp = block.self_attn, block.mlp
        qkv = [
            packed(f"blk.{i}.attn_q.weight", attn.q_proj, c.n_heads),
            packed(f"blk.{i}.attn_k.weight", attn.k_proj, c.n_kv_heads),
            packed(f"blk.{i}.attn_v.weight", attn.v_proj),
        ]
        gate_up = [
            packed(f"blk.{i}.ffn_gate.weight", mlp.gate_proj),
            packed(f"blk.{i}.ffn_up.weight", mlp.up_proj),
        ]
        attn.o_proj = packed(f"blk.{i}.attn_output.weight", attn.o_proj)
        mlp.down_proj = packed(f"blk.{i}.ffn_down.weight", mlp.down_proj)
        for owner, names in ((attn, ("q_proj", "k_proj", "v_proj")), (mlp, ("gate_proj", "up_proj"))):
            for name in names:
                delattr(owner, name)
            _forget_fused(owner)
        attn.qkv_proj, mlp.gate_up_proj = PackedLinear.cat(qkv), PackedLinear.cat(gate_up)
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"  # tied: the embedding
    model.lm_head = packed(head, model.lm_head)
    model.config.extra["packed"] = "Q4_1/Q8_0 blocks (anatomy.packed)"
    return model.eval()
