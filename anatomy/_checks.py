"""Argument checks shared by the package: every refusal is a TypeError (wrong kind of value) or a
ValueError (right kind, wrong value) whose message starts with the argument's name.

``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python, but
``tile=True`` is a mistake, not a tile of 1).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = [
    "check_bool",
    "check_choice",
    "check_device",
    "check_dtype",
    "check_float",
    "check_generator",
    "check_instance",
    "check_int",
    "check_positive_int",
    "check_tensor",
    "check_values",
    "is_int",
    "is_number",
]


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real Python or NumPy number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(lo, hi, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "finite"


def check_int(name: str, value, *, lo: int | None = None, hi: int | None = None, none: bool = False):
    """``value`` as an int in [lo, hi] (either bound optional); None passes if ``none``."""
    if value is None and none:
        return None
    if not is_int(value):
        kind = "an int" + (" or None" if none else "")
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        text = "a positive int" if (lo, hi) == (1, None) else f"an int {_range_text(lo, hi)}"
        raise ValueError(f"{name} must be {text}, got {value}")
    return value


def check_positive_int(name: str, value, *, none: bool = False):
    """``value`` as an int >= 1."""
    return check_int(name, value, lo=1, none=none)


def check_float(
    name: str,
    value,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
    none: bool = False,
):
    """``value`` as a float, not NaN, finite unless ``finite=False``, within the bounds (open or closed)."""
    if value is None and none:
        return None
    if not is_number(value):
        kind = "a number" + (" or None" if none else "")
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = math.isnan(value) or (finite and math.isinf(value))
    if lo is not None:
        bad = bad or value < lo or (lo_open and value == lo)
    if hi is not None:
        bad = bad or value > hi or (hi_open and value == hi)
    if bad:
        text = _range_text(lo, hi, lo_open, hi_open)
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number {text}, got {value!r}")
    return value


def check_values(name: str, value, *, lo: float | None = None):
    """A number, NumPy array or tensor of finite values (>= lo if given); str, bool or None: TypeError."""
    if isinstance(value, (str, bytes, bool)) or not (is_number(value) or hasattr(value, "__array__")):
        raise TypeError(f"{name} must be a number, an array or a tensor, got {type(value).__name__}")
    values = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else value).double()
    if not torch.isfinite(values).all() or (lo is not None and (values < lo).any()):
        raise ValueError(f"{name} must hold finite numbers{f' >= {lo}' if lo is not None else ''}")
    return value


def check_bool(name: str, value) -> bool:
    """A real bool or NumPy bool (not 0/1, not a tensor), as a bool."""
    if isinstance(value, np.bool_):  # e.g. the result of a NumPy comparison
        return bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value, choices):
    """One of ``choices`` (compared with ==; a non-hashable or unknown value is a ValueError)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


_KINDS = {
    "float": lambda t: t.is_floating_point(),
    "int": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
    "bool": lambda t: t.dtype == torch.bool,
}


def check_tensor(name: str, value, *, kind: str | tuple[str, ...] | None = None, dim: int | None = None):
    """A torch.Tensor of the given kind(s) ("float", "int", "bool") and number of dims."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and not any(_KINDS[k](value) for k in kinds):
        raise TypeError(f"{name} must be a {' or '.join(kinds)} tensor, got {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must have {dim} dims, got shape {tuple(value.shape)}")
    return value


def check_dtype(name: str, value, *, floating: bool = False, none: bool = False):
    """A torch.dtype (a string such as "float16" is a TypeError that says so)."""
    if value is None and none:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(
            f"{name} must be a torch.dtype (e.g. torch.float32){' or None' if none else ''}, "
            f"got {type(value).__name__} {value!r}"
        )
    if floating and not value.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype, got {value}")
    return value


def check_generator(name: str, value):
    """None or a torch.Generator."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def check_device(name: str, value, *, none: bool = False):
    """A torch.device or a string naming one -> torch.device (None passes if ``none``)."""
    if value is None and none:
        return None
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a str or torch.device, got {type(value).__name__}")
    try:
        return torch.device(value)
    except RuntimeError as e:
        raise ValueError(f"{name} must name a torch device, got {value!r}") from e


def check_instance(name: str, value, cls: type | tuple[type, ...], what: str | None = None):
    """An instance of ``cls`` (``what`` names it in the message, e.g. "an anatomy Config")."""
    if not isinstance(value, cls):
        if what is None:
            names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
            what = f"a {names}"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value
