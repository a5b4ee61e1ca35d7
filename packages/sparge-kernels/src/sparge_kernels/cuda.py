"""Loads the compiled extension `sparge_kernels._C` and registers its kernels as the CUDA backend.

The extension does not link libtorch: torch glue (allocation, streams, layout strides) lives here.
"""

from __future__ import annotations

from .backend import register_cuda_backend

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # built without nvcc, or not built at all
    _C = None
    register_cuda_backend(None, f"the compiled extension sparge_kernels._C is missing ({exc})")


def cuda_available() -> bool:
    """True when the wheel carries CUDA kernels."""
    return _C is not None
