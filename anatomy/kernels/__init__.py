"""Our attention kernels: the tiled PyTorch kernel and the Triton kernel."""

from __future__ import annotations

import importlib.util

from anatomy.kernels.tiled import tiled_attention


def triton_attention(*args, **kwargs):
    """The Triton backend (:mod:`anatomy.kernels.triton_kernel`), loaded lazily: triton is an optional
    dependency (``pip install "why-decoder-only[gpu]"``, or ``pip install triton``)."""
    if importlib.util.find_spec("triton") is None:
        raise ImportError(
            "backend='triton' needs the triton package: pip install triton (or why-decoder-only[gpu])"
        )
    from anatomy.kernels.triton_kernel import triton_attention as impl  # noqa: PLC0415 (imports triton)

    return impl(*args, **kwargs)


__all__ = ["tiled_attention", "triton_attention"]
