"""Torch glue of the CUDA block-sparse attention forward (`_C.attention_forward`).

Receives HND views (possibly strided, e.g. NHD transposed), allocates out in q's memory layout and lse
(float32, (B, H, Lq)), and launches on the caller's current stream. The kernel reads q/k/v through their
strides; an operand whose last dim is not unit-stride, or whose pointer/strides are not 16-byte aligned,
is copied to a contiguous tensor first (documented, rare: sliced or odd-strided inputs).
"""

from __future__ import annotations

import os

import torch

from . import _C  # type: ignore[attr-defined]
from .cuda_limits import KERNEL_DTYPE_NAMES as _DTYPE_NAMES
from .cuda_limits import check_blocks_and_dtype
from .validation import num_blocks

# Which kernel: "auto" (the Hopper wgmma/TMA kernel on sm_90 GPUs when the wheel was built for 90a, else the
# portable mma.sync kernel), "sm80" or "sm90". Default from SPARGE_FORWARD_PATH, else "auto".
forward_path: str | None = None

# Test hook: when set to a float, out and lse are filled with it before the launch, so rows the kernel
# fails to write stay detectable (the tests poison with NaN).
debug_fill_value: float | None = None


def _kernel_ready(x: torch.Tensor) -> torch.Tensor:
    """x itself when the kernel can read it through its strides, else a contiguous copy."""
    elem = x.element_size()
    aligned = x.data_ptr() % 16 == 0 and all(s % (16 // elem) == 0 for s in x.stride()[:3])
    if x.stride(-1) == 1 and aligned:
        return x
    return x.contiguous()


def _empty_like_layout(q: torch.Tensor) -> torch.Tensor:
    """Uninitialised (B, H, Lq, D) output stored like q: (B, Lq, H, D) memory when q is an NHD view."""
    b, h, lq, d = q.shape
    if h > 1 and q.stride(1) < q.stride(2):
        return torch.empty(b, lq, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    return torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_count: torch.Tensor,
    kv_index: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backend.forward on HND views: returns (out (B, H, Lq, D) in q's dtype and layout, lse float32 (B, H, Lq))."""
    check_blocks_and_dtype("block-sparse attention", block_q, block_k, q.dtype)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if v.shape[-1] != d:
        raise ValueError(f"v must have head dim {d} like q, got {v.shape[-1]}")
    built = {int(x) for x in _C.build_head_dims.split(",") if x}
    if d not in built:
        raise ValueError(f"head dim {d} has no compiled CUDA kernel (this build has {sorted(built)})")
    nq, nk = num_blocks(lq, block_q), num_blocks(lk, block_k)
    if tuple(kv_index.shape) != (b, h, nq, nk) or tuple(kv_count.shape) != (b, h, nq):
        raise ValueError(
            f"kv_count/kv_index have shapes {tuple(kv_count.shape)}/{tuple(kv_index.shape)}, "
            f"expected {(b, h, nq)}/{(b, h, nq, nk)}"
        )
    if kv_count.dtype != torch.int32 or kv_index.dtype != torch.int32:
        raise TypeError("kv_count and kv_index must be int32")
    q, k, v = _kernel_ready(q), _kernel_ready(k), _kernel_ready(v)
    kv_count, kv_index = kv_count.contiguous(), kv_index.contiguous()
    out = _empty_like_layout(q)
    lse = torch.empty(b, h, lq, dtype=torch.float32, device=q.device)
    if debug_fill_value is not None:
        out.fill_(debug_fill_value)
        lse.fill_(debug_fill_value)
    with torch.cuda.device(q.device):
        _C.attention_forward(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
            kv_count.data_ptr(), kv_index.data_ptr(),
            b, h, lq, lk, d,
            q.stride(), k.stride(), v.stride(), out.stride(),
            _DTYPE_NAMES[q.dtype], block_q, block_k, float(scale),
            torch.cuda.current_stream(q.device).cuda_stream,
            forward_path or os.environ.get("SPARGE_FORWARD_PATH", "auto"),
        )
    return out, lse
