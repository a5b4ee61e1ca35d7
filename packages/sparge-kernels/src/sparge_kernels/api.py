"""Public API: validate, call the `sparge` ops, pack results into `BlockMask`."""

from __future__ import annotations

import torch

from . import ops
from .block_mask import BlockMask
from .validation import (
    check_block_size,
    check_layout,
    check_mask_fits,
    check_qkv,
    check_topk_topp,
    resolve_scale,
)

__all__ = ["predict_block_mask", "block_sparse_attention", "sparge_attention"]


def _check_selection_args(q, k, v, topk, topp, block_q, block_k, scale, layout):
    """Validate the arguments shared by mask prediction and sparge_attention; returns them normalised."""
    layout = check_layout(layout)
    _, _, lq, lk, d = check_qkv(q, k, v, layout)
    topk, topp = check_topk_topp(topk, topp)
    block_q, block_k = check_block_size("block_q", block_q), check_block_size("block_k", block_k)
    return layout, lq, lk, topk, topp, block_q, block_k, resolve_scale(scale, d)


def predict_block_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    topk: float = 0.03,
    topp: float = 0.2,
    block_q: int = 128,
    block_k: int = 64,
    scale: float | None = None,
    layout: str = "HND",
) -> BlockMask:
    """Predict which key blocks each query block attends to (hybrid Top-k ∪ Top-p on pooled scores).

    Args:
        q: (B, H, Lq, D) for layout "HND", (B, Lq, H, D) for "NHD". Strided views are fine.
        k: (B, H, Lk, D) / (B, Lk, H, D).
        topk: fraction of key blocks always kept per row, as max(1, ceil(topk·Nk)); 0 disables.
        topp: keep the most probable blocks until their mass reaches topp; 0 disables.
        block_q, block_k: tokens per query block and per key block; a block longer than the sequence is one
            block covering the whole sequence (same result as block = sequence length).
        scale: softmax scale of the pooled scores, default 1/sqrt(D).
    """
    layout, lq, lk, topk, topp, block_q, block_k, scale = _check_selection_args(
        q, k, None, topk, topp, block_q, block_k, scale, layout
    )
    kv_count, kv_index, q_count, q_index = ops.predict_block_mask_op(q, k, topk, topp, block_q, block_k, scale, layout)
    return BlockMask(kv_count, kv_index, q_count, q_index, block_q, block_k, lq, lk, _trusted=True)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    *,
    scale: float | None = None,
    layout: str = "HND",
    return_lse: bool = False,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention restricted to the kept (query block, key block) pairs of `mask`.

    Returns out (dtype and layout of q) and, with return_lse, the float32 log-sum-exp (B, H, Lq) of each
    query row's scaled scores. Differentiable w.r.t. q, k, v; `deterministic` avoids atomics in dQ.
    """
    layout = check_layout(layout)
    b, h, lq, lk, d = check_qkv(q, k, v, layout)
    check_mask_fits(mask, b, h, lq, lk, q.device)
    mask.check_unmodified()  # a bad index must never reach a kernel, even after an in-place edit
    scale = resolve_scale(scale, d)
    out, lse = ops.block_sparse_attention_op(
        q, k, v, mask.kv_count, mask.kv_index, mask.q_count, mask.q_index,
        mask.block_q, mask.block_k, scale, layout, bool(deterministic),
    )
    return (out, lse) if return_lse else out


def sparge_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    topk: float = 0.03,
    topp: float = 0.2,
    block_q: int = 128,
    block_k: int = 64,
    scale: float | None = None,
    layout: str = "HND",
    return_mask: bool = False,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, BlockMask]:
    """SpargeAttention2: predict the hybrid block mask from q and k, then attend over the kept blocks.

    The same `scale` serves the pooled scores and the attention. No gradient flows through the selection.
    """
    layout, lq, lk, topk, topp, block_q, block_k, scale = _check_selection_args(
        q, k, v, topk, topp, block_q, block_k, scale, layout
    )
    mask = ops.predict_block_mask_op(q, k, topk, topp, block_q, block_k, scale, layout)
    out, _ = ops.block_sparse_attention_op(q, k, v, *mask, block_q, block_k, scale, layout, bool(deterministic))
    if return_mask:
        # Library output: valid by construction, so no content check (no device sync).
        return out, BlockMask(*mask, block_q, block_k, lq, lk, _trusted=True)
    return out
