"""The `sparge` torch.library custom ops: fake (meta) implementations, autograd, device dispatch.

Two forward ops, predict_block_mask and block_sparse_attention (sparge_attention is the one, then the other),
and the backward of the attention. Ops take plain tensors and scalars (no BlockMask) so torch.compile can trace
them; the public wrappers in `api.py` validate arguments and pack/unpack `BlockMask`. Each op's implementation
asks `backend_for(device)` for the reference or the CUDA glue (backend.py). Outputs are contiguous in the
caller's layout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import torch
from torch import Tensor

from .backend import MaskArgs, backend_for
from .validation import num_blocks, to_hnd


def _from_hnd(x: Tensor, layout: str) -> Tensor:
    return x.transpose(1, 2).contiguous() if layout == "NHD" else x.contiguous()


def _dims(q: Tensor, k: Tensor, layout: str) -> tuple[int, int, int, int]:
    qh, kh = to_hnd(q, layout), to_hnd(k, layout)
    return qh.shape[0], qh.shape[1], qh.shape[2], kh.shape[2]


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------- mask prediction
@torch.library.custom_op("sparge::predict_block_mask", mutates_args=())
def predict_block_mask_op(
    q: Tensor, k: Tensor, topk: float, topp: float, block_q: int, block_k: int, scale: float, layout: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    backend = backend_for(q.device)
    return backend.predict(to_hnd(q, layout), to_hnd(k, layout), topk, topp, block_q, block_k, scale)


@predict_block_mask_op.register_fake
def _predict_fake(q, k, topk, topp, block_q, block_k, scale, layout):
    b, h, lq, lk = _dims(q, k, layout)
    nq, nk = num_blocks(lq, block_q), num_blocks(lk, block_k)
    i32 = dict(dtype=torch.int32, device=q.device)
    return (
        q.new_empty((b, h, nq), **i32),
        q.new_empty((b, h, nq, nk), **i32),
        q.new_empty((b, h, nk), **i32),
        q.new_empty((b, h, nk, nq), **i32),
    )


# ------------------------------------------------------------------------------ the attention ops' parameters
def _takes_mask_args(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Declare `fn(<own tensors>, *mask_args)` as taking MaskArgs' fields (backend.py) in place of `*mask_args`.

    torch.library infers an op's schema from `inspect.signature`, so the schema names every field (as a typed
    parameter list would) while the list is written once.
    """
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    hints = get_type_hints(MaskArgs)
    fields = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[name])
              for name in MaskArgs._fields]
    fn.__signature__ = sig.replace(parameters=own + fields)
    return fn


# ------------------------------------------------------------------------------------ attention, backward
@torch.library.custom_op("sparge::block_sparse_attention_backward", mutates_args=())
@_takes_mask_args
def block_sparse_attention_backward_op(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Tensor | None, *mask_args: Any
) -> tuple[Tensor, Tensor, Tensor]:
    m = MaskArgs(*mask_args)
    backend = backend_for(q.device)
    hnd = [to_hnd(t, m.layout) for t in (dout, q, k, v, out)]
    dq, dk, dv = backend.backward(*hnd, lse, dlse, m)
    return _from_hnd(dq, m.layout), _from_hnd(dk, m.layout), _from_hnd(dv, m.layout)


@block_sparse_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, dlse, *mask_args):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format
    ), torch.empty_like(v, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------- attention, forward
@torch.library.custom_op("sparge::block_sparse_attention", mutates_args=())
@_takes_mask_args
def block_sparse_attention_op(q: Tensor, k: Tensor, v: Tensor, *mask_args: Any) -> tuple[Tensor, Tensor]:
    m = MaskArgs(*mask_args)
    backend = backend_for(q.device)
    out, lse = backend.forward(to_hnd(q, m.layout), to_hnd(k, m.layout), to_hnd(v, m.layout), m)
    return _from_hnd(out, m.layout), lse


@block_sparse_attention_op.register_fake
def _(q, k, v, *mask_args):
    b, h, lq = to_hnd(q, MaskArgs(*mask_args).layout).shape[:3]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty((b, h, lq), dtype=_lse_dtype(q.dtype))


def _setup_block_sparse(ctx, inputs, output):
    q, k, v, *mask_args = inputs
    out, lse = output
    m = MaskArgs(*mask_args)
    ctx.save_for_backward(q, k, v, out, lse, m.kv_count, m.kv_index, m.q_count, m.q_index)
    ctx.block_q, ctx.block_k, ctx.scale, ctx.layout, ctx.deterministic = (
        m.block_q, m.block_k, m.scale, m.layout, m.deterministic
    )


def _backward_block_sparse(ctx, grad_out, grad_lse):
    # No gradient flows into the mask (integer indices): a predicted selection is piecewise constant in q, k.
    q, k, v, out, lse, kv_count, kv_index, q_count, q_index = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = block_sparse_attention_backward_op(
        grad_out, q, k, v, out, lse, grad_lse, kv_count, kv_index, q_count, q_index,
        ctx.block_q, ctx.block_k, ctx.scale, ctx.layout, ctx.deterministic,
    )
    return dq, dk, dv, *(None,) * len(MaskArgs._fields)


block_sparse_attention_op.register_autograd(_backward_block_sparse, setup_context=_setup_block_sparse)
