"""What the compiled attention kernels accept, checked once for the forward and backward glue."""

from __future__ import annotations

import torch

SUPPORTED_BLOCKS = (128, 64)  # (block_q, block_k) of the compiled kernels
KERNEL_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


def check_blocks_and_dtype(kernel: str, block_q: int, block_k: int, dtype: torch.dtype) -> None:
    """Raise a clear error, naming `kernel`, for block sizes or a dtype the compiled kernels don't have."""
    if (block_q, block_k) != SUPPORTED_BLOCKS:
        raise ValueError(
            f"the CUDA {kernel} supports block_q=128 and block_k=64 only, got block_q={block_q}, "
            f"block_k={block_k} (set SPARGE_BACKEND=reference for other block sizes)"
        )
    if dtype not in KERNEL_DTYPE_NAMES:
        raise TypeError(
            f"the CUDA {kernel} takes float16 or bfloat16 q, k, v, got {dtype} (cast, or set SPARGE_BACKEND=reference)"
        )
