"""Chooses the implementation behind the `sparge` ops for a tensor's device: ops.py -> `backend_for` -> a Backend.

CPU (and any non-CUDA device) runs the reference. CUDA runs the compiled kernels through their glue:
  predict   cuda_mask.predict       -> _C.mask_predict
  forward   cuda_forward.forward    -> _C.attention_forward
  backward  cuda_backward.backward  -> _C.attention_backward
If the wheel was built without them, a CUDA tensor raises instead of silently falling back. Setting
SPARGE_BACKEND=reference opts in to the (slow) reference on CUDA explicitly, e.g. to debug a kernel against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from . import cuda, cuda_backward, cuda_forward, cuda_mask, reference


class MaskArgs(NamedTuple):
    """What both attention ops take after their own tensors, in schema order, and hand on to a backend's forward
    and backward: the kept-block lists in both directions (the backward walks key blocks too, so autograd saves
    q_count/q_index), the block sizes, the softmax scale, the callers' layout (a backend gets HND views and does
    not read it) and the dQ mode. One object, so that the CUDA glue and the reference take one signature."""

    kv_count: Tensor
    kv_index: Tensor
    q_count: Tensor
    q_index: Tensor
    block_q: int
    block_k: int
    scale: float
    layout: str = "HND"
    deterministic: bool = False


@dataclass(frozen=True)
class Backend:
    """The three entry points an implementation provides, all on HND views.

    predict(q, k, topk, topp, block_q, block_k, scale) -> (kv_count, kv_index, q_count, q_index)
    forward(q, k, v, m: MaskArgs) -> (out HND, lse)
    backward(dout, q, k, v, out, lse, dlse, m: MaskArgs) -> (dq, dk, dv) HND
    """

    predict: Callable[..., tuple[torch.Tensor, ...]]
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# The reference keeps its public signatures; it is deterministic and needs only the forward-direction indices.
def _reference_forward(q, k, v, m: MaskArgs):
    return reference.attention_forward(q, k, v, m.kv_count, m.kv_index, m.block_q, m.block_k, m.scale)


def _reference_backward(dout, q, k, v, out, lse, dlse, m: MaskArgs):
    return reference.attention_backward(
        dout, q, k, v, out, lse, dlse, m.kv_count, m.kv_index, m.block_q, m.block_k, m.scale
    )


REFERENCE = Backend(reference.predict_block_mask_indices, _reference_forward, _reference_backward)
CUDA = Backend(cuda_mask.predict, cuda_forward.forward, cuda_backward.backward)


def backend_for(device: torch.device) -> Backend:
    """REFERENCE for non-CUDA devices and SPARGE_BACKEND=reference; else CUDA, once this build is known to run on
    `device` (a RuntimeError naming the wheel to install if not)."""
    if device.type != "cuda" or os.environ.get("SPARGE_BACKEND", "").lower() == "reference":
        return REFERENCE
    if not cuda.kernels_built():
        raise RuntimeError(
            "sparge-kernels has no CUDA kernels for this tensor on "
            f"{device}: {cuda.MISSING_REASON or 'the wheel was built without CUDA (no nvcc at build time)'}. "
            "Reinstall sparge-kernels on a machine with nvcc, or set SPARGE_BACKEND=reference to run the slow "
            "PyTorch reference on the GPU."
        )
    cuda.check_device(device)
    return CUDA
