"""Chooses the implementation behind the `sparge` ops for a tensor's device.

CPU (and any non-CUDA device) runs the reference. CUDA runs the compiled kernels; if the wheel was built
without them, a CUDA tensor raises instead of silently falling back. Setting SPARGE_BACKEND=reference
opts in to the (slow) reference on CUDA explicitly, e.g. to debug a kernel against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference


@dataclass(frozen=True)
class Backend:
    """The three entry points an implementation provides, all on HND views.

    predict(q, k, topk, topp, block_q, block_k, scale) -> (kv_count, kv_index, q_count, q_index)
    forward(q, k, v, kv_count, kv_index, block_q, block_k, scale) -> (out HND, lse)
    backward(dout, q, k, v, out, lse, dlse, kv_count, kv_index, q_count, q_index, block_q, block_k, scale,
             deterministic) -> (dq, dk, dv) HND
    """

    name: str
    predict: Callable[..., tuple[torch.Tensor, ...]]
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _reference_predict(q, k, topk, topp, block_q, block_k, scale):
    from .block_mask import indices_from_dense

    dense = reference.predict_block_mask(q, k, topk, topp, block_q, block_k, scale)
    kv_count, kv_index = indices_from_dense(dense)
    q_count, q_index = indices_from_dense(dense.transpose(-1, -2))
    return kv_count, kv_index, q_count, q_index


def _reference_backward(dout, q, k, v, out, lse, dlse, kv_count, kv_index, q_count, q_index, block_q, block_k,
                        scale, deterministic):
    # The reference is deterministic and needs only the forward-direction indices.
    return reference.attention_backward(dout, q, k, v, out, lse, dlse, kv_count, kv_index, block_q, block_k, scale)


REFERENCE = Backend("reference", _reference_predict, reference.attention_forward, _reference_backward)

_cuda_backend: Backend | None = None
_cuda_error: str | None = None
# Raises if the compiled kernels cannot run on a device (wrong CUDA major for the driver, archs missing the GPU).
_cuda_check: Callable[[torch.device], None] | None = None


def register_cuda_backend(backend: Backend | None, error: str | None = None,
                          check: Callable[[torch.device], None] | None = None) -> None:
    """Called once by the CUDA glue: the kernels and their device check, or the reason they are unavailable."""
    global _cuda_backend, _cuda_error, _cuda_check
    _cuda_backend, _cuda_error, _cuda_check = backend, error, check


def backend_for(device: torch.device) -> Backend:
    if device.type != "cuda" or os.environ.get("SPARGE_BACKEND", "").lower() == "reference":
        return REFERENCE
    if _cuda_backend is None:
        raise RuntimeError(
            "sparge-kernels has no CUDA kernels for this tensor on "
            f"{device}: {_cuda_error or 'the wheel was built without CUDA (no nvcc at build time)'}. "
            "Reinstall sparge-kernels on a machine with nvcc, or set SPARGE_BACKEND=reference to run the slow "
            "PyTorch reference on the GPU."
        )
    if _cuda_check is not None:
        _cuda_check(device)
    return _cuda_backend
