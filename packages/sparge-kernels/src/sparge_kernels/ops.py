"""The `sparge` torch.library ops: fake (meta) implementations, autograd, device dispatch.

Two forward ops, predict_block_mask and block_sparse_attention (sparge_attention is the one, then the other),
and the backward of the attention. Ops take plain tensors and scalars (no BlockMask) so torch.compile can trace
them; the public wrappers in `api.py` validate arguments and pack/unpack `BlockMask`. Each op's implementation
asks `backend_for(device)` for the reference or the CUDA glue (backend.py). Outputs are contiguous in the
caller's layout and never alias an input.

The ops are registered with torch.library's low-level API (`_op`), not `torch.library.custom_op`: the dispatcher
then calls the implementation directly, where custom_op's Python wrappers cost about 9 µs per call on a CPU host
(tools/bench_host_overhead.py; several times that on the H200 machine's host). Schema (from the signature), fake
implementation, autograd and opcheck are the same.
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


_LIBRARY = torch.library.Library("sparge", "DEF")  # the ops live as long as this module
_infer_schema = getattr(torch.library, "infer_schema", None)
if _infer_schema is None:  # torch 2.4
    from torch._library.infer_schema import infer_schema as _infer_schema


def _op(fn: Callable[..., Any]) -> torch._ops.OpOverload:
    """Define `sparge::<name>` (fn's name without `_op`) with fn's signature as its schema and fn as its
    implementation on every device (fn picks its backend itself); returns the op."""
    name = fn.__name__.removesuffix("_op")
    _LIBRARY.define(name + _infer_schema(fn, mutates_args=()))
    _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
    return getattr(torch.ops.sparge, name).default


# ----------------------------------------------------------------------------------------- mask prediction
@_op
def predict_block_mask_op(
    q: Tensor, k: Tensor, topk: float, topp: float, block_q: int, block_k: int, scale: float, layout: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    backend = backend_for(q.device)
    return backend.predict(to_hnd(q, layout), to_hnd(k, layout), topk, topp, block_q, block_k, scale)


@torch.library.register_fake("sparge::predict_block_mask")
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

    The op's schema is inferred from `inspect.signature`, so it names every field (as a typed parameter list
    would) while the list is written once.
    """
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    hints = get_type_hints(MaskArgs)
    fields = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[name])
              for name in MaskArgs._fields]
    fn.__signature__ = sig.replace(parameters=own + fields)
    return fn


# ------------------------------------------------------------------------------------ attention, backward
@_op
@_takes_mask_args
def block_sparse_attention_backward_op(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Tensor | None, *mask_args: Any
) -> tuple[Tensor, Tensor, Tensor]:
    m = MaskArgs(*mask_args)
    backend = backend_for(q.device)
    hnd = [to_hnd(t, m.layout) for t in (dout, q, k, v, out)]
    dq, dk, dv = backend.backward(*hnd, lse, dlse, m)
    return _from_hnd(dq, m.layout), _from_hnd(dk, m.layout), _from_hnd(dv, m.layout)


@torch.library.register_fake("sparge::block_sparse_attention_backward")
def _(dout, q, k, v, out, lse, dlse, *mask_args):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format
    ), torch.empty_like(v, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------- attention, forward
@_op
@_takes_mask_args
def block_sparse_attention_op(q: Tensor, k: Tensor, v: Tensor, *mask_args: Any) -> tuple[Tensor, Tensor]:
    m = MaskArgs(*mask_args)
    backend = backend_for(q.device)
    out, lse = backend.forward(to_hnd(q, m.layout), to_hnd(k, m.layout), to_hnd(v, m.layout), m)
    return _from_hnd(out, m.layout), lse


@torch.library.register_fake("sparge::block_sparse_attention")
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


torch.library.register_autograd("sparge::block_sparse_attention", _backward_block_sparse,
                                setup_context=_setup_block_sparse)
