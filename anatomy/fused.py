"""Fused training ops: the same math as the plain formulas, in fewer passes over memory.

Speed only; nothing here changes what a model computes beyond the last bits of float32 rounding (the tests
compare every op with the plain formula and with autograd).

* :func:`linear_cross_entropy`: the LM head and the cross-entropy together, chunk by chunk over the rows.
  The plain path materialises the logits (B * N, vocab) and then their gradient, each as large as the
  whole batch times the vocabulary (64 MB at 2048 tokens and a vocabulary of 8192); here each chunk's
  logits are turned into its loss and its softmax gradient while they are in cache, and the gradients of
  the hidden states and of the head's weight are accumulated chunk by chunk, during the forward pass
  (as Liger-Kernel's fused linear cross-entropy does). The backward pass only scales them by the incoming
  gradient. The matmul FLOPs are the plain path's: one product for the logits, two for the gradients.
* :class:`_RMSNormFunction`: RMSNorm with PyTorch's one-kernel forward and a hand-written backward
  (the autograd of the formula runs about a dozen kernels and saves as many tensors).
* :class:`_SwiGLUFunction`: silu(gate) * up from the one (..., 2 d_ff) output of the fused gate/up matmul,
  whose backward writes both halves of the gradient into one tensor (autograd's would concatenate them).
* :class:`_GateUpSwiGLUFunction`: the gate and up projections and silu(gate) * up in one op, the gate and up
  products each into a contiguous tensor (the fused matmul's gate half is a strided view, on which SiLU
  and its backward run ~2x slower).
* Matrix products by oneDNN (:func:`_mm_t`): the ops above, and every ``nn.Linear`` of a training forward
  pass through :class:`_OneDNNLinears` (which :func:`anatomy.train.next_token_loss` uses), run their float32
  CPU products through ``torch.ops.mkldnn._linear_pointwise``, the other matrix library PyTorch ships. On
  this machine's AMD CPU it runs a training step's shapes at ~150-220 GFLOP/s where MKL's sgemm, which
  ``F.linear`` and ``torch.mm`` call (PyTorch's default, and transformers'), runs at ~85-105 (measured in
  benches/train_throughput.py and by hand), most likely on a generic code path for a non-Intel CPU: the gap
  depends on the CPU, and on an Intel CPU it may be small or none. The same products, with the sums in
  another order.
  Only on x86-64 CPUs (elsewhere, e.g. Apple silicon, PyTorch's oneDNN may have only generic kernels).
  Under a dispatch mode (``FlopCounterMode``, a fake-tensor trace) the products stay aten's, so they are
  counted and traced as on the plain path.
"""

from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from anatomy._checks import check_int, check_positive_int, check_tensor
from anatomy.weight_layout import fused_weight

__all__ = ["CHUNK_ROWS", "linear_cross_entropy"]

CHUNK_ROWS = 256  # rows of logits per chunk: 256 x 8192 float32 is 8 MB, which stays in a 32 MB L3 cache


@functools.cache
def _onednn():
    """oneDNN's linear op (``x @ w.T``), or None if this PyTorch has none or it does not compute that here.

    The one check for both of its users: this module's training products and :mod:`anatomy.prefill`."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
            return None  # measured on x86-64 only; elsewhere (Apple silicon) oneDNN may lack fast kernels
        g = torch.Generator().manual_seed(0)
        f32 = dict(generator=g, dtype=torch.float32, device="cpu")  # whatever torch's defaults say
        x, w = torch.randn(5, 7, **f32), torch.randn(3, 7, **f32)
        with torch.no_grad():
            ok = torch.allclose(op(x, w, None, "none", [], ""), x @ w.T, atol=1e-5)
            ok = ok and torch.allclose(op(x.t(), x.t(), None, "none", [], ""), x.T @ x, atol=1e-5)  # strided
            # an input-major weight (anatomy.prefill's models) is the transpose of a contiguous (in, out) one
            ok = ok and torch.allclose(
                op(x, w.t().contiguous().t(), None, "none", [], ""), x @ w.T, atol=1e-5
            )
            add = torch.ops.mkldnn._linear_pointwise.binary(x, x @ w.T, w, None, "add")
            ok = ok and torch.allclose(add, 2 * (x @ w.T), atol=1e-5)
    except (AttributeError, RuntimeError):
        return None
    return op if ok else None


def _dnn(*tensors: torch.Tensor) -> bool:
    """Whether products of these tensors go to oneDNN: float32 CPU tensors, oneDNN present and enabled, no
    dispatch mode.

    A dispatch mode (FlopCounterMode counting ``train_step_flops``, a fake-tensor trace) sees aten's matrix
    products instead, so it counts and traces the same operations as on the plain path.
    """
    return (
        not torch._C._len_torch_dispatch_stack()  # first: _onednn's one-time check must not run under a mode
        and torch._C._get_mkldnn_enabled()  # torch.backends.mkldnn.flags(enabled=False) switches it off
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and _onednn() is not None
    )


def _mm_t(a: torch.Tensor, b: torch.Tensor, dnn: bool) -> torch.Tensor:
    """a @ b.T for 2-D a (m, k) and b (n, k): by oneDNN if ``dnn``, else by ``torch.mm`` (MKL on the CPU)."""
    return _onednn()(a, b, None, "none", [], "") if dnn else torch.mm(a, b.t())


def _mm_t_add(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """c + a @ b.T by oneDNN (its product with an added operand), for operands that passed :func:`_dnn`."""
    return torch.ops.mkldnn._linear_pointwise.binary(a, c, b, None, "add")


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_rows):
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        valid = labels != ignore_index
        n = int(valid.sum())
        scale = 1.0 / n if n else float("nan")  # F.cross_entropy's mean over no target is NaN too
        safe = labels.masked_fill(~valid, 0).unsqueeze(1)
        # mean over targets; ignored rows get no loss, no gradient (with no target at all, the loss is NaN and
        # every gradient 0, as F.cross_entropy's: valid * NaN would make them NaN)
        row_scale = (valid * (scale if n else 0.0)).unsqueeze(1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None  # the first chunk's product fills it (MKL)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # the softmax in float32 at least
        total = hidden.new_zeros((), dtype=acc)
        dnn = _dnn(hidden, weight)  # the products by oneDNN (see _mm_t)
        weight_t = None if dnn else weight.t().contiguous()  # (d, vocab): MKL is faster with it row-major
        rows = min(chunk_rows, n_rows)
        logits = hidden.new_empty((rows, vocab))  # two buffers reused by every chunk, so no page faults
        probs = logits.new_empty((rows, vocab), dtype=acc)
        for s in range(0, n_rows, chunk_rows):
            h = hidden[s : s + chunk_rows]
            c = h.shape[0]
            z, p = logits[:c], probs[:c]
            z = _mm_t(h, weight, dnn) if dnn else torch.mm(h, weight_t, out=z)
            torch.ops.aten._softmax.out(z.to(acc), 1, False, out=p)
            tgt, v = safe[s : s + c], row_scale[s : s + c]
            p_t = p.gather(1, tgt)
            nll = p_t.log().neg_()
            tiny = p_t < 1e-30  # the softmax underflowed (or lost precision): that row's log-softmax exactly
            if bool(tiny.any()):
                exact = -torch.log_softmax(z.to(acc), dim=-1).gather(1, tgt)
                nll = torch.where(tiny, exact, nll)
            total += torch.where(v != 0, nll, 0.0).sum()
            if need_h or need_w:
                g = p.scatter_add_(1, tgt, torch.full_like(p_t, -1.0)).mul_(v)  # (softmax - one-hot) / n
                g = g.to(hidden.dtype)
                if need_h:
                    if dnn:
                        grad_h[s : s + c] = _mm_t(g, weight.t(), dnn)
                    else:
                        torch.mm(g, weight, out=grad_h[s : s + c])
                if need_w and dnn:  # g.T @ h, added to the sum so far by oneDNN's product itself
                    gt, ht = g.t(), h.t()
                    grad_w = _mm_t(gt, ht, dnn) if s == 0 else _mm_t_add(gt, ht, grad_w)
                elif need_w:
                    # out= rather than addmm_: the same kernel and bits, and FlopCounterMode counts it
                    # (it does not count the in-place addmm_, so train_step_flops would miss them)
                    torch.mm(g.t(), h, out=grad_w) if s == 0 else torch.addmm(grad_w, g.t(), h, out=grad_w)
        ctx.save_for_backward(grad_h, grad_w)
        return total * scale  # float32 at least, as F.cross_entropy of the logits .float()

    @staticmethod
    @once_differentiable  # the gradients were computed in the forward pass: no graph to differentiate again
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        grads = []
        for g in (grad_h, grad_w):
            # the usual case: the loss itself is differentiated (grad_out == 1), so no scaling pass
            grads.append(None if g is None else g if bool(grad_out == 1) else g * grad_out)
        return grads[0], grads[1], None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``labels``, without materialising them.

    hidden (..., d), weight (vocab, d) (an LM head without bias), labels (...) int ids in [0, vocab) or
    ``ignore_index``. Equals ``F.cross_entropy((hidden @ weight.T).flatten(0, -2).float(), labels.flatten(),
    ignore_index=ignore_index)`` up to float32 rounding, and so do its gradients (with respect to hidden and
    weight). Rows whose label is ``ignore_index`` carry no loss and get a zero gradient (F.cross_entropy's
    log-softmax backward would give NaN for a NaN row; a NaN in a row with a target gives a NaN loss in
    both). Logits and their gradient exist only ``chunk_rows`` rows at a time (default ``CHUNK_ROWS``).
    """
    check_tensor("hidden", hidden, kind="float")
    check_tensor("weight", weight, kind="float", dim=2)
    check_tensor("labels", labels, kind="int")
    if hidden.ndim < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden's last dimension must be weight's (vocab, d) d = {weight.shape[1]}, "
            f"got hidden of shape {tuple(hidden.shape)}"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels must have hidden's shape without its last dimension {tuple(hidden.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )
    if hidden.dtype != weight.dtype or hidden.device != weight.device or labels.device != hidden.device:
        raise ValueError(
            f"hidden and weight must share a dtype and device with labels, got {hidden.dtype} on "
            f"{hidden.device}, {weight.dtype} on {weight.device}, labels on {labels.device}"
        )
    check_int("ignore_index", ignore_index)
    chunk_rows = CHUNK_ROWS if chunk_rows is None else check_positive_int("chunk_rows", chunk_rows)
    flat = labels.reshape(-1).long()
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= weight.shape[0]))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be ids in [0, {weight.shape[0]}) or ignore_index={ignore_index}, "
            f"got {int(flat[bad][0])}"
        )
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, flat, ignore_index, chunk_rows
    )


class _RMSNormFunction(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps) * weight over the last dimension, in float32, with its own backward.

    Forward: PyTorch's fused kernel (``aten._fused_rms_norm``, which also returns rsqrt(mean(x^2) + eps)).
    Backward, with r = rsqrt(mean(x^2) + eps), x_hat = x r and g = grad_y * weight:
    grad_x = r (g - x_hat mean(g x_hat)), grad_weight = sum over rows of grad_y x_hat.
    """

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = _fused_rms_norm(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @once_differentiable  # rstd is saved, not differentiated again: a second derivative would be wrong
    def backward(ctx, grad_y):
        x, weight, rstd = ctx.saved_tensors
        x_hat = x * rstd
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad_y * x_hat).reshape(-1, x.shape[-1]).sum(0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = grad_y * weight
            dot = (g * x_hat).sum(-1, keepdim=True).div_(x.shape[-1])
            grad_x = g.sub_(x_hat.mul_(dot)).mul_(rstd)
        return grad_x, grad_w, None


_HAS_FUSED_RMS = hasattr(torch.ops.aten, "_fused_rms_norm")  # PyTorch >= 2.8 (requirements allow 2.5)


def _fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """(y, rstd): PyTorch's one-kernel RMSNorm where it has one, else the formula (the same numbers)."""
    global _HAS_FUSED_RMS
    if _HAS_FUSED_RMS:
        try:
            return torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        except NotImplementedError:  # an op without a kernel for this device in this PyTorch
            _HAS_FUSED_RMS = False
    rstd = (x * x).mean(-1, keepdim=True).add_(eps).rsqrt_()
    return x * rstd * weight, rstd


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of float32 x over its last dimension with :class:`_RMSNormFunction` (no argument checks)."""
    return _RMSNormFunction.apply(x, weight, eps)


class _SwiGLUFunction(torch.autograd.Function):
    """gate_up (..., 2 f) -> silu(gate) * up (..., f), gate and up its two halves, with its own backward.

    Backward: grad_up = grad * silu(gate), grad_gate = silu'(gate) * grad * up, written into the two halves
    of one (..., 2 f) tensor: the same kernels and numbers as autograd's, minus its concatenation.
    """

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate, up, act)
        return act * up

    @staticmethod
    @once_differentiable  # its out= kernels are not differentiable: a clear error for a second derivative
    def backward(ctx, grad):
        gate, up, act = ctx.saved_tensors
        out = grad.new_empty(gate.shape[:-1] + (2 * gate.shape[-1],))
        grad_gate, grad_up = out.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        torch.mul(grad, act, out=grad_up)
        return out


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the halves of gate_up (..., 2 f) with :class:`_SwiGLUFunction` (no checks)."""
    return _SwiGLUFunction.apply(gate_up)


class _GateUpSwiGLUFunction(torch.autograd.Function):
    """x (..., d), w_gate, w_up (f, d) -> silu(x w_gate^T) * (x w_up^T) (..., f), with its own backward.

    The numbers of ``_swiglu(F.linear(x, cat([w_gate, w_up])))``: each half of that one product is the product
    with its half of the weight (the same dot products), and the backward pass writes both halves of the
    gradient into one (rows, 2 f) tensor, so the gradient of x is the same one product with the concatenated
    weight and the weights' gradient the same one product with x. What changes is the memory: gate and up
    are contiguous (the one product's halves are strided views, on which SiLU and its backward run about
    twice as slowly) and nothing is concatenated under autograd.
    """

    @staticmethod
    def forward(ctx, x, w_gate, w_up):
        x2 = x.reshape(-1, x.shape[-1])
        dnn = _dnn(x2, w_gate, w_up)
        gate, up = _mm_t(x2, w_gate, dnn), _mm_t(x2, w_up, dnn)
        act = F.silu(gate)
        ctx.save_for_backward(x2, w_gate, w_up, gate, up, act)
        ctx.x_shape = x.shape
        return (act * up).view(*x.shape[:-1], up.shape[-1])

    @staticmethod
    @once_differentiable  # its out= kernels are not differentiable: a clear error for a second derivative
    def backward(ctx, grad):
        x2, w_gate, w_up, gate, up, act = ctx.saved_tensors
        grad = grad.reshape(gate.shape)
        f = gate.shape[1]
        both = grad.new_empty((grad.shape[0], 2 * f))  # [grad of gate | grad of up], one row per token
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=both[:, :f])
        torch.mul(grad, act, out=both[:, f:])
        grad_x = grad_gate = grad_up = None
        dnn = _dnn(both, x2, w_gate, w_up)
        if ctx.needs_input_grad[0]:
            grad_x = _mm_t(both, torch.cat([w_gate, w_up]).t(), dnn).view(ctx.x_shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_gate, grad_up = _mm_t(both.t(), x2.t(), dnn).split(f)
        return grad_x, grad_gate, grad_up


def _swiglu_mlp(mlp: nn.Module, x: torch.Tensor, packed: nn.Module | None = None) -> torch.Tensor:
    """silu(gate_proj(x)) * up_proj(x) of an :class:`anatomy.model.MLP` under autograd (before down_proj).

    Plain bias-free ``nn.Linear`` gate and up projections (Llama's) take :class:`_GateUpSwiGLUFunction`;
    anything else (biases, packed weights) the fused matmul and :class:`_SwiGLUFunction`. The same numbers.
    """
    gate, up = mlp._modules.get("gate_proj"), mlp._modules.get("up_proj")
    if packed is None and type(gate) is nn.Linear and type(up) is nn.Linear and gate.bias is up.bias is None:
        return _GateUpSwiGLUFunction.apply(x, gate.weight, up.weight)
    gate_up = packed(x) if packed is not None else F.linear(x, *fused_weight(mlp, ("gate_proj", "up_proj")))
    return _swiglu(gate_up)


class _LinearFunction(torch.autograd.Function):
    """``F.linear`` (x @ weight.T + bias) with every product through :func:`_mm_t` (oneDNN where it can)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        y = _mm_t(x2, weight, _dnn(x2, weight))
        if bias is not None:
            y += bias
        ctx.save_for_backward(x2, weight)
        ctx.x_shape, ctx.bias = x.shape, bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        grad = grad.reshape(-1, weight.shape[0])
        dnn = _dnn(grad, x2, weight)
        grad_x = _mm_t(grad, weight.t(), dnn).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_w = _mm_t(x2.t(), grad.t(), dnn).t() if ctx.needs_input_grad[1] else None  # (x.T grad).T, faster
        grad_b = grad.sum(0) if ctx.bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class _OneDNNLinears(torch.overrides.TorchFunctionMode):
    """Within it, ``F.linear`` of float32 CPU tensors (every ``nn.Linear``) runs as :class:`_LinearFunction`.

    For a training forward pass (see :func:`anatomy.train.next_token_loss`): on this machine's AMD CPU,
    oneDNN runs the float32 products of a training step about twice as fast as MKL, which ``F.linear``
    calls (most likely MKL's generic code path on a non-Intel CPU; the gap depends on the CPU). The same
    products, summed in another order.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = _linear_args(args, kwargs)
            if _fits(x, weight, bias):
                return _LinearFunction.apply(x, weight, bias)
        return func(*args, **kwargs)


def _fits(x, weight, bias) -> bool:
    """A well-formed float32 CPU ``F.linear`` call for oneDNN; anything else goes to F.linear (its errors)."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        all(isinstance(t, torch.Tensor) for t in tensors)
        and _dnn(*tensors)
        and weight.ndim == 2
        and x.ndim >= 1
        and x.shape[-1] == weight.shape[1] > 0
        and x.numel() > 0
        and (bias is None or tuple(bias.shape) == (weight.shape[0],))
    )


def _linear_args(args, kwargs):
    """(input, weight, bias) of an ``F.linear`` call, however they were passed."""
    merged = dict(zip(("input", "weight", "bias"), args), **kwargs)
    return merged.get("input"), merged.get("weight"), merged.get("bias")
