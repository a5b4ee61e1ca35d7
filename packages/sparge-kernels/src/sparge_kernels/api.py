"""Public API: validate, call the `sparge` ops, pack results into `BlockMask`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, get_type_hints

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


class _Selection(NamedTuple):
    """The keyword arguments of the block selection, with their defaults, shared by the two entry points that
    select blocks (predict_block_mask, sparge_attention): declared once here, `_takes_selection` puts them into
    both signatures."""

    topk: float = 0.03
    topp: float = 0.2
    block_q: int = 128
    block_k: int = 64
    scale: float | None = None
    layout: str = "HND"


def _takes_selection(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Declare `fn(<tensors>, *, <own keywords>, **selection)` as taking _Selection's fields, keyword-only with
    their defaults, after the tensors: what help() and inspect.signature show (as ops._takes_mask_args does for
    the ops' schemas). _check_selection_args builds `_Selection(**selection)`: an unknown keyword still raises
    TypeError."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = get_type_hints(_Selection)
    fields = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[name])
        for name, default in _Selection._field_defaults.items()
    ]
    tensors = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    own = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    fn.__signature__ = sig.replace(parameters=tensors + fields + own)
    return fn


def _check_selection_args(q, k, v, selection: dict[str, Any]):
    """Validate the arguments shared by mask prediction and sparge_attention; returns them normalised."""
    topk, topp, block_q, block_k, scale, layout = _Selection(**selection)
    layout = check_layout(layout)
    _, _, lq, lk, d = check_qkv(q, k, v, layout)
    topk, topp = check_topk_topp(topk, topp)
    block_q, block_k = check_block_size("block_q", block_q), check_block_size("block_k", block_k)
    return layout, lq, lk, topk, topp, block_q, block_k, resolve_scale(scale, d)


@_takes_selection
def predict_block_mask(q: torch.Tensor, k: torch.Tensor, **selection: Any) -> BlockMask:
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
    layout, lq, lk, topk, topp, block_q, block_k, scale = _check_selection_args(q, k, None, selection)
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


@_takes_selection
def sparge_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    return_mask: bool = False,
    deterministic: bool = False,
    **selection: Any,
) -> torch.Tensor | tuple[torch.Tensor, BlockMask]:
    """SpargeAttention2: predict the hybrid block mask from q and k, then attend over the kept blocks.

    The same `scale` serves the pooled scores and the attention. No gradient flows through the selection.
    """
    layout, lq, lk, topk, topp, block_q, block_k, scale = _check_selection_args(q, k, v, selection)
    mask = ops.predict_block_mask_op(q, k, topk, topp, block_q, block_k, scale, layout)
    out, _ = ops.block_sparse_attention_op(q, k, v, *mask, block_q, block_k, scale, layout, bool(deterministic))
    if return_mask:
        # Library output: valid by construction, so no content check (no device sync).
        return out, BlockMask(*mask, block_q, block_k, lq, lk, _trusted=True)
    return out
