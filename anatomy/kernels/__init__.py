"""Our attention kernels: the tiled PyTorch kernel and the Triton kernel."""

from __future__ import annotations

import importlib.util

from anatomy.kernels.tiled import tiled_attention


def triton_attention(*args, **kwargs):
    """The Triton backend (loaded lazily: triton is an optional dependency, ``pip install anatomy[gpu]``)."""
    if importlib.util.find_spec("triton") is None:
        raise ImportError("backend='triton' needs the triton package: pip install triton (or anatomy[gpu])")
    try:
        from anatomy.kernels.triton_kernel import triton_attention as impl
    except ModuleNotFoundError as e:
        if e.name != "anatomy.kernels.triton_kernel":
            raise
        raise NotImplementedError("the Triton kernel is not part of this version of anatomy yet") from e
    return impl(*args, **kwargs)


__all__ = ["tiled_attention", "triton_attention"]
