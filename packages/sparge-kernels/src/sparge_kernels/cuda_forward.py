"""Torch glue of the CUDA block-sparse attention forward (`_C.attention_forward`): `Backend.forward` of CUDA.

Receives HND views (possibly strided, e.g. NHD transposed), allocates out in q's memory layout and lse
(float32, (B, H, Lq)), and launches on the caller's current stream. Tensors go to `_C` as they are (the
extension reads each one's pointer, dtype, shape and strides: csrc/common/tensor_caster.h). The kernel reads
q/k/v through their strides; an operand whose last dim is not unit-stride, or whose pointer/strides are not
16-byte aligned, is copied to a contiguous tensor first (documented, rare: sliced or odd-strided inputs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .cuda import _C, current_stream, empty_like_layout, kernel_ready
from .options import KernelOptions, current_kernel_options
from .validation import check_attention_kernel_args, check_kernel_path

if TYPE_CHECKING:  # backend.py imports this module
    from .backend import MaskArgs


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: MaskArgs, *, options: KernelOptions | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backend.forward on HND views: returns (out (B, H, Lq, D) in q's dtype and layout, lse float32 (B, H, Lq)).

    `m` gives the kept-block lists, the block sizes and the scale. `options` (default: `current_kernel_options()`,
    read here, at launch) picks the kernel and the debug fill.
    """
    options = options if options is not None else current_kernel_options()
    b, h, lq, d = q.shape
    check_attention_kernel_args("block-sparse attention", q.dtype, d, m.block_q, m.block_k, _C)
    capability = torch.cuda.get_device_capability(q.device)
    check_kernel_path("forward_path", options.forward_path, _C.build_archs, capability)
    q, k, v = kernel_ready(q), kernel_ready(k), kernel_ready(v)
    kv_count, kv_index = m.kv_count.contiguous(), m.kv_index.contiguous()
    out = empty_like_layout(q)
    lse = torch.empty(b, h, lq, dtype=torch.float32, device=q.device)
    if options.debug_fill is not None:
        out.fill_(options.debug_fill)
        lse.fill_(options.debug_fill)
    # The Hopper kernel's tile counter (the portable kernel ignores it): the launcher zeroes it on the stream; one
    # per call, so concurrent launches on other streams never share it, and it lives until the kernel is done
    # because the caching allocator reuses it only for later work on the same stream.
    counter = torch.empty(1, dtype=torch.int32, device=q.device)
    with torch.cuda.device(q.device):
        _C.attention_forward(
            q, k, v, out, lse, kv_count, kv_index,
            block_q=m.block_q, block_k=m.block_k, scale=float(m.scale),
            stream=current_stream(q.device), path=options.forward_path,
            tile_counter=counter.data_ptr(),
        )
    return out, lse
