"""The model's weights laid out for speed: fused projections and input-major storage.

Nothing here changes a number the model computes; it changes which matmuls run and how the weights lie
in memory. :mod:`anatomy.model` reads as the textbook version (three Linears q, k, v; two Linears gate,
up) and calls :func:`fused_weight` to run each group as one matmul. :func:`to_input_major` stores every
Linear weight (in, out) in memory, the order in which a one-token decoding step streams it fastest.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["FUSED_GROUPS", "fused_weight", "to_input_major"]


# The Linears that run as one matmul (see fused_weight): (module attribute of a block, Linear names).
FUSED_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


def fused_weight(owner: nn.Module, names: tuple[str, ...]):
    """One weight (and bias) for several Linears that read the same input, so they run as one matmul.

    Under autograd the weights are concatenated on every call, so gradients reach each Linear. Without it
    (inference), the Linears' weights are moved once into one buffer and a view of it is returned: no copy
    per call, no second copy in memory, and the Parameters stay the same objects (same names in the state
    dict, same tensors for an optimizer). If a weight is replaced (``.to()``, loading with assign=True), the
    pointers no longer match and the buffer is rebuilt. Returns (weight (sum of outs, in), bias or None).
    """
    # Plain dict lookups, not nn.Module attribute access: this runs twice per layer per decoded token. A bad
    # argument makes these lookups fail, and only then is it named (_refuse); what the lookups cannot see (a
    # module that is not a Linear, mixed biases or input sizes) is checked where the weights are concatenated
    # or packed.
    try:
        linears = [owner._modules[name] for name in names]
        weights = [lin._parameters["weight"] for lin in linears]
        biases = [lin._parameters["bias"] for lin in linears] if linears[0].bias is not None else []
        tensors = weights + biases
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if not grad:
            ptrs = [t.data_ptr() for t in tensors]
            fused = owner.__dict__.get("_fused")
            if fused is not None and fused[0] == ptrs:
                return fused[1], fused[2]  # the usual case at inference: the buffer is still the weights'
    except (AttributeError, IndexError, KeyError, TypeError) as error:
        raise _refuse(owner, names) from error
    if grad:
        _check_linears(owner, names, linears)
        return torch.cat(weights), (torch.cat(biases) if biases else None)
    with torch.no_grad(), torch.inference_mode(False):  # the parameters must stay normal tensors
        _check_linears(owner, names, linears)
        w_all, b_all = _packed(weights), _packed(biases) if biases else None
    fused = owner.__dict__["_fused"] = ([t.data_ptr() for t in weights + biases], w_all, b_all)
    return fused[1], fused[2]


def _refuse(owner, names) -> Exception:
    """The ValueError/TypeError naming the argument that made :func:`fused_weight`'s lookups fail."""
    if not isinstance(owner, nn.Module):
        return TypeError(f"owner must be a torch.nn.Module, got {type(owner).__name__}")
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        return TypeError(f"names must be a tuple of Linear names, got {names!r}")
    if not names:
        return ValueError(f"names must name at least one Linear, got {names!r}")
    for name in names:
        if not isinstance(owner._modules.get(name), nn.Linear):
            linears = [n for n, m in owner.named_children() if isinstance(m, nn.Linear)]
            return ValueError(
                f"names: {name!r} is not a Linear of owner {type(owner).__name__} (its Linears: {linears})"
            )
    return ValueError(
        f"names {names!r} must name Linears of owner with the same in_features that all have a "
        "bias or all have none"
    )


def _check_linears(owner, names, linears) -> None:
    if (
        not all(isinstance(m, nn.Linear) for m in linears)
        or len({(m.bias is None, m.in_features) for m in linears}) != 1
    ):
        raise _refuse(owner, names)


def _packed(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor whose rows are ``tensors``, sharing their memory (moved into one buffer if needed).

    Already adjacent in one buffer means either layout: row-major blocks one after another (as loaded),
    or the column blocks of one input-major (in, sum of outs) buffer (after :func:`to_input_major`).
    """
    joined = _adjacent(tensors)
    if joined is not None:
        return joined
    packed = torch.cat([t.detach() for t in tensors])
    for t, part in zip(tensors, packed.split([t.shape[0] for t in tensors])):
        t.data = part
    return packed


def _adjacent(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The view whose rows are ``tensors`` if they already lie one after another in one buffer, else None."""
    first = tensors[0].detach()
    rows = sum(t.shape[0] for t in tensors)
    if not (first.is_contiguous() or (first.dim() == 2 and first.stride() == (1, rows))):
        return None
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for t in tensors:
        if (
            t.untyped_storage().data_ptr() != storage
            or t.storage_offset() != offset
            or t.stride() != first.stride()
            or t.shape[1:] != first.shape[1:]
        ):
            return None
        offset += t.shape[0] * t.stride(0)
    return first.as_strided((rows, *first.shape[1:]), first.stride())


@torch.no_grad()
def _forget_fused(owner: nn.Module) -> None:
    """Drop ``owner``'s cached fused buffer (:func:`fused_weight` builds it again on its next call)."""
    owner.__dict__.pop("_fused", None)


def to_input_major(model: nn.Module) -> nn.Module:
    """Store every Linear weight (out, in) input-major: the memory is (in, out), the Parameter its transpose.

    The numbers and the Parameters' shapes and names stay the same; only the memory order changes, and with
    it the speed of a one-token forward pass. Decoding multiplies one row vector by each weight matrix, and
    on this CPU MKL streams an (in, out) matrix for ``x @ W`` ~1.3x faster than the (out, in) matrix of
    ``x @ W.T`` that ``nn.Linear`` stores. Linears that run fused (q/k/v, gate/up) share one (in, sum of
    outs) buffer, and tied embeddings follow the LM head. Training still works (the gradients have the
    usual layout). Returns ``model``, changed in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    grouped = set()
    for module in model.modules():
        for attr, names in FUSED_GROUPS:
            owner = module._modules.get(attr)
            if owner is None or not all(isinstance(owner._modules.get(n), nn.Linear) for n in names):
                continue
            linears = [owner._modules[n] for n in names]
            weights = [lin.weight for lin in linears]
            grouped.update(id(lin) for lin in linears)
            total = sum(w.shape[0] for w in weights)
            joined = _adjacent(weights)
            if joined is not None and joined.stride() == (1, total):
                continue  # already one input-major buffer (e.g. loaded that way)
            buffer = torch.cat([w.detach().t() for w in weights], dim=1)  # (in, sum of outs), contiguous
            start = 0
            for w in weights:
                w.data = buffer[:, start : start + w.shape[0]].t()
                start += w.shape[0]
            _forget_fused(owner)
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in grouped:
            w = module.weight
            if w.stride() != (1, w.shape[0]):
                w.data = w.detach().t().contiguous().t()  # tied embeddings share this Parameter
    return model


def _is_input_major(model: nn.Module) -> bool:
    """Whether every Linear weight of ``model`` (at least one) is stored input-major: memory (in, out), on
    its own (stride (1, out)) or as a column block of a fused group's buffer (stride (1, sum of outs))."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return bool(weights) and all(
        w.dim() == 2 and w.stride(0) == 1 and w.stride(1) >= w.shape[0] for w in weights
    )


def _deepcopy(model: nn.Module, memo: dict) -> nn.Module:
    """``copy.deepcopy(model)`` that keeps the input-major layout of :func:`to_input_major`.

    A plain deep copy clones each Parameter on its own; the fused groups' weights, which are column blocks
    of one buffer, come back as ordinary (out, in) tensors, and the copy would decode on the textbook path.
    The copy is made as ``nn.Module`` makes it, then laid out input-major again if ``model`` was (the same
    numbers; the layout is rebuilt, not copied).
    """
    clone = type(model).__new__(type(model))
    memo[id(model)] = clone
    state = {k: v for k, v in model.__dict__.items() if k not in ("_decode_plan", "_fused")}  # caches
    clone.__setstate__(copy.deepcopy(state, memo))
    return to_input_major(clone) if _is_input_major(model) else clone
