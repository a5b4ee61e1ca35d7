"""sparge-kernels: SpargeAttention2 block-sparse attention (hybrid Top-k+Top-p masks) as torch ops."""

from __future__ import annotations

from . import reference
from ._version import __version__
from .api import block_sparse_attention, predict_block_mask, sparge_attention
from .block_mask import BlockMask
from .cuda import cuda_available, kernels_built
from .options import KernelOptions, kernel_options

__all__ = [
    "BlockMask",
    "KernelOptions",
    "block_sparse_attention",
    "cuda_available",
    "kernel_options",
    "kernels_built",
    "predict_block_mask",
    "reference",
    "sparge_attention",
    "__version__",
]
