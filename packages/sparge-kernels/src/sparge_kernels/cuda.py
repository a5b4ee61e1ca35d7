"""Loads the compiled extension `sparge_kernels._C` and registers its kernels as the CUDA backend.

The extension does not link libtorch: the torch glue (allocation, strides, the current stream) is Python,
one module per kernel family, each providing the `Backend` entry point of the same name:
  cuda_forward.py  -> forward(q, k, v, kv_count, kv_index, block_q, block_k, scale)
  cuda_mask.py     -> predict(q, k, topk, topp, block_q, block_k, scale)      (else: the PyTorch reference, on GPU)
  cuda_backward.py -> backward(dout, q, k, v, out, lse, dlse, ...)            (else: a clear error)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch

from . import compat
from ._version import __version__
from .backend import Backend, _reference_predict, register_cuda_backend

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # built without nvcc, or not built at all
    _C = None
    _C_ERROR = f"the compiled extension sparge_kernels._C is missing ({exc})"
else:
    _C_ERROR = None


def _glue_module(name: str) -> ModuleType | None:
    """Import `sparge_kernels.<name>` if that file exists; errors inside an existing module propagate."""
    qualified = f"{__package__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return None
        raise


def _entry(module: ModuleType | None, *names: str) -> Callable | None:
    if module is None:
        return None
    for name in names:
        fn = getattr(module, name, None)
        if fn is not None:
            return fn
    return None


def _missing(what: str) -> Callable:
    def fail(*args, **kwargs):
        raise RuntimeError(
            f"CUDA {what} kernel not built: this sparge-kernels wheel has no CUDA {what}. "
            "Set SPARGE_BACKEND=reference to run the (slow) PyTorch reference on the GPU."
        )

    return fail


def _build_backend() -> Backend:
    forward = _entry(_glue_module("cuda_forward"), "forward")
    predict = _entry(_glue_module("cuda_mask"), "predict", "predict_block_mask")
    backward = _entry(_glue_module("cuda_backward"), "backward", "attention_backward")
    return Backend(
        "cuda",
        predict=predict or _reference_predict,
        forward=forward or _missing("forward"),
        backward=backward or _missing("backward"),
    )


_devices_checked: set[int] = set()


def _check_device(device: torch.device) -> None:
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


if _C is None:
    register_cuda_backend(None, _C_ERROR)
else:
    register_cuda_backend(_build_backend(), check=_check_device)


def kernels_built() -> bool:
    """True when this installation carries the compiled CUDA kernels (sparge_kernels._C), GPU or not."""
    return _C is not None


def cuda_available() -> bool:
    """True when the CUDA kernels can run here: the kernels are built and torch sees a CUDA GPU.

    In sparge-kernels 0.1.0 it meant only "the wheel has kernels" (True on a machine without a GPU); that
    question is now `kernels_built()`.
    """
    return _C is not None and torch.cuda.is_available()
