"""The compiled extension `sparge_kernels._C`: is it installed, can it run on this GPU, and the torch side of
crossing into it (outputs in the inputs' layout, operands it can read in place, the caller's stream).

The extension does not link libtorch: the torch glue is Python, one module per kernel family (cuda_mask.py,
cuda_forward.py, cuda_backward.py), each importing `_C` from here. `_C` is None when the wheel was built without
CUDA; backend.py then raises for CUDA tensors before any glue runs.
"""

from __future__ import annotations

import torch

from . import compat
from ._version import __version__

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # built without nvcc, or not built at all
    _C = None
    MISSING_REASON: str | None = f"the compiled extension sparge_kernels._C is missing ({exc})"
else:
    MISSING_REASON = None


def kernels_built() -> bool:
    """True when this installation carries the compiled CUDA kernels (sparge_kernels._C), GPU or not."""
    return _C is not None


def cuda_available() -> bool:
    """True when the CUDA kernels can run here: the kernels are built and torch sees a CUDA GPU.

    In sparge-kernels 0.1.0 it meant only "the wheel has kernels" (True on a machine without a GPU); that
    question is now `kernels_built()`.
    """
    return _C is not None and torch.cuda.is_available()


_devices_checked: set[int] = set()


def check_device(device: torch.device) -> None:
    """Raise (compat.check_runnable) if this build cannot run on `device`; checked once per device index."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _devices_checked:
        return
    compat.check_runnable(
        build_cuda_version=_C.build_cuda_version,
        build_archs=_C.build_archs,
        capability=tuple(torch.cuda.get_device_capability(index)),
        driver_version=_C.driver_version(),
        device_name=torch.cuda.get_device_name(index),
        version=__version__,
    )
    _devices_checked.add(index)


# ------------------------------------------------------------------------------- tensors crossing into _C
def kernel_ready(x: torch.Tensor) -> torch.Tensor:
    """x itself when the kernels can read it through its strides (unit-stride last dim, 16-byte-aligned pointer
    and strides), else a contiguous copy (rare: sliced or odd-strided inputs)."""
    per_16_bytes = 16 // x.element_size()
    aligned = x.data_ptr() % 16 == 0 and all(s % per_16_bytes == 0 for s in x.stride()[:3])
    if x.stride(-1) == 1 and aligned:
        return x
    return x.contiguous()


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """Uninitialised (B, H, L, D) tensor stored like x: (B, L, H, D) memory when x is an NHD view."""
    b, h, length, d = x.shape
    if h > 1 and x.stride(1) < x.stride(2):
        return torch.empty(b, length, h, d, dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(b, h, length, d, dtype=x.dtype, device=x.device)


def current_stream(device: torch.device) -> int:
    """The caller's current CUDA stream on `device`, as the integer the bindings take."""
    return torch.cuda.current_stream(device).cuda_stream
