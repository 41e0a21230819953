"""FlashAttention in Triton: the tiled kernel of :mod:`anatomy.kernels.tiled`, one program per query block.

Three modules, one idea each: :mod:`anatomy.kernels.triton_forward` holds the forward kernel (off-band key
tiles unmasked, on-band tiles masked, tiles above the diagonal never loaded; online softmax in base 2),
:mod:`anatomy.kernels.triton_backward` the backward kernels (FlashAttention-2's split into ``dq`` per query
block and ``dk, dv`` per key block), and this module the host side: argument checks, the launch
configuration (block size, head_dim padding, precision, shared-memory fallback), the interpreter's
workarounds, the autograd function and the entry point :func:`triton_attention`.

Limits and fallbacks (documented, tested):

* ``tile`` becomes ``BLOCK_M = BLOCK_N``: the largest power of two <= ``tile``, at least 16 (``tl.dot``
  needs 16) and at most 128 / 64 / 32 for head_dim <= 64 / 128 / 256. So ``tile=100`` runs 64-wide tiles
  and ``tile=7`` runs 16-wide ones; the result does not depend on it beyond float rounding.
  :func:`block_size` gives the mapping. If a GPU's shared memory cannot hold those tiles (a T4 has
  64 KiB, e.g. for float32 128 x 64 tiles), the block is halved until the kernel launches.
* head_dim is padded to a power of two >= 16 inside the kernel (loads are masked); at most 256.
* dtypes float32, float16, bfloat16; accumulation is always float32, and float32 matmuls use
  ``input_precision="ieee"`` (no TF32), so float32 results agree with a float64 reference to ~1e-6.
* ``key_padding_mask`` is not implemented in the Triton kernel: such calls fall back to
  :func:`anatomy.kernels.tiled.tiled_attention` (forward and autograd), with the same results.
* Tensors must be on a CUDA device, or on the CPU with the Triton interpreter: ``TRITON_INTERPRET=1`` in the
  environment before triton is first imported (Triton decorates its own library then, and this module's
  kernels when it is imported).
"""

from __future__ import annotations

import torch
import triton

from anatomy._checks import is_int
from anatomy.kernels.triton_backward import _attn_bwd_dkdv, _attn_bwd_dq
from anatomy.kernels.triton_forward import _attn_fwd
from anatomy.masks import MASKS

INTERPRET: bool = bool(
    triton.knobs.runtime.interpret
)  # fixed when triton_forward/backward's kernels were decorated
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_KIND = {"bidirectional": 0, "causal": 1, "prefix": 2}
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def block_size(tile: int, head_dim: int) -> int:
    """The Triton tile edge (BLOCK_M = BLOCK_N) used for a requested ``tile`` and head dimension."""
    if not is_int(tile) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if not is_int(head_dim) or not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must be an int in [1, 256] for the Triton kernel, got {head_dim!r}")
    cap = 128 if head_dim <= 64 else 64 if head_dim <= 128 else 32
    return max(16, min(cap, 1 << (tile.bit_length() - 1)))


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype not in DTYPES:
            raise TypeError(f"the Triton kernel takes float32, float16 or bfloat16 tensors, got {t.dtype}")
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and INTERPRET:
            continue
        raise RuntimeError(
            f"the Triton kernel runs on CUDA tensors, or on CPU tensors under the Triton interpreter; got a "
            f"{t.device} tensor and TRITON_INTERPRET={'1' if INTERPRET else 'unset'} when "
            "anatomy.kernels.triton_kernel was first imported (set TRITON_INTERPRET=1 before that import)"
        )


def _launch_config(q: torch.Tensor, mask: str) -> dict:
    D = q.shape[-1]
    return dict(
        HEAD_DIM=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        MASK_KIND=_MASK_KIND[mask],
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_stages=2,
    )


# Largest block that fit in shared memory, per (kernel, device, dtype, head_dim): see _launch.
_FITTING_BLOCK: dict[tuple, int] = {}


def _launch(name: str, q: torch.Tensor, block: int, launch) -> int:
    """Call ``launch(block)``; if the GPU's shared memory cannot hold the tiles, halve the block and retry.

    A T4 (Colab) has 64 KiB of shared memory per block, an A100 164 KiB: float32 tiles of 128 x 64 fit the
    second, not the first. The block that worked is remembered, so the retry happens once per shape.
    Returns the block used.
    """
    key = (name, str(q.device), q.dtype, q.shape[-1])
    block = min(block, _FITTING_BLOCK.get(key, block))
    while True:
        try:
            launch(block)
            return block
        except triton.runtime.errors.OutOfResources:
            if block <= 16:
                raise
            block //= 2
            _FITTING_BLOCK[key] = block


def _interpreter_upcast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under the interpreter, bfloat16 runs as float32: its tl.dot multiplies raw bit patterns.

    The interpreter stores bfloat16 as uint16 and does not convert it before a matmul (triton-lang/triton
    issue 11584; its debugging guide asks for a cast to float32). On a GPU bfloat16 runs natively.
    """
    if INTERPRET and tensors[0].dtype == torch.bfloat16:
        return tuple(None if t is None else t.float() for t in tensors)
    return tensors


def _forward(q, k, v, mask, q_offset, prefix_len, tile, count=False):
    in_dtype = q.dtype
    q, k, v = _interpreter_upcast(q, k, v)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    cfg = _launch_config(q, mask)
    out = torch.empty((B, Hq, Nq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Nq), dtype=torch.float32, device=q.device)
    counts = None

    def launch(block):
        nonlocal counts
        n_blocks = triton.cdiv(Nq, block)
        counts = torch.zeros((B * Hq, n_blocks, 2), dtype=torch.int32, device=q.device) if count else None
        _attn_fwd[(n_blocks, B * Hq)](
            q, k, v, out, lse, lse if counts is None else counts,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            Hq, Hq // Hkv, Nq, Nk, q_offset, prefix_len or 0, D**-0.5 * _LOG2E,
            BLOCK_M=block, BLOCK_N=block, num_warps=4 if block <= 64 else 8, COUNT=count, **cfg,
        )  # fmt: skip

    _launch("fwd", q, block_size(tile, D), launch)
    return out.to(in_dtype), lse, counts


def _backward(q, k, v, out, lse, dout, dlse, mask, q_offset, prefix_len, tile):
    in_dtype = q.dtype
    q, k, v, out, dout = _interpreter_upcast(q, k, v, out, dout)
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    cfg = _launch_config(q, mask)
    # delta_i = sum_d O_id dO_id (minus the gradient of the returned log-sum-exp, if any)
    delta = (out.float() * dout.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    common = (Nq, Nk, q_offset, prefix_len or 0, D**-0.5, D**-0.5 * _LOG2E)

    def launch_dq(block):
        _attn_bwd_dq[(triton.cdiv(Nq, block), B * Hq)](
            q, k, v, dout, dq, lse, delta,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
            Hq, Hq // Hkv, *common,
            BLOCK_M=block, BLOCK_N=block, num_warps=4 if block <= 64 else 8, **cfg,
        )  # fmt: skip

    def launch_dkdv(block):
        _attn_bwd_dkdv[(triton.cdiv(Nk, block), B * Hkv)](
            q, k, v, dout, dk, dv, lse, delta,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            Hkv, Hq // Hkv, *common,
            BLOCK_M=block, BLOCK_N=block, num_warps=4 if block <= 64 else 8, **cfg,
        )  # fmt: skip

    _launch("bwd_dq", q, block_size(tile, D), launch_dq)
    _launch("bwd_dkdv", q, block_size(tile, D), launch_dkdv)
    return dq.to(in_dtype), dk.to(in_dtype), dv.to(in_dtype)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, q_offset, prefix_len, tile):
        out, lse, _ = _forward(q, k, v, mask, q_offset, prefix_len, tile)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (mask, q_offset, prefix_len, tile)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(q, k, v, out, lse, dout, dlse, *ctx.args)
        return dq, dk, dv, None, None, None, None


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: str,
    *,
    q_offset: int,
    prefix_len: int | None,
    tile: int,
    key_padding_mask: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """FlashAttention in Triton; q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D) -> out [, lse (B, Hq, Nq)].

    Same semantics as :func:`anatomy.kernels.tiled.tiled_attention` (arguments are assumed valid:
    ``anatomy.attention`` checks them). Differentiable through Triton backward kernels. With a
    ``key_padding_mask`` it falls back to the tiled PyTorch kernel. ``lse`` is returned in the input dtype,
    like the tiled kernel's.
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if key_padding_mask is not None:
        from anatomy.kernels.tiled import tiled_attention

        return tiled_attention(
            q, k, v, mask, q_offset=q_offset, prefix_len=prefix_len, tile=tile,
            key_padding_mask=key_padding_mask, return_lse=return_lse,
        )  # fmt: skip
    _check_device(q, k, v)
    block_size(tile, q.shape[-1])
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad:
        out, lse = _TritonAttention.apply(q, k, v, mask, q_offset, prefix_len, tile)
    else:
        out, lse, _ = _forward(q, k, v, mask, q_offset, prefix_len, tile)
    return (out, lse.to(q.dtype)) if return_lse else out


def visited_tiles(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: str,
    *,
    q_offset: int,
    prefix_len: int | None = None,
    tile: int = 128,
) -> torch.Tensor:
    """Run the forward kernel and report what each program loaded: int tensor (B*Hq, query blocks, 2).

    ``[..., 0]`` counts the off-band key tiles (no mask), ``[..., 1]`` the on-band ones (masked). Summed
    over query blocks they should equal the FULL and non-EMPTY - FULL tiles of :func:`anatomy.masks.tile_map`
    for ``tile=block_size(tile, D)`` (up to a ragged last key tile, which the kernel masks).
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    _check_device(q, k, v)
    block_size(tile, q.shape[-1])
    with torch.no_grad():
        return _forward(q, k, v, mask, q_offset, prefix_len, tile, count=True)[2]


__all__ = ["DTYPES", "INTERPRET", "block_size", "triton_attention", "visited_tiles"]
