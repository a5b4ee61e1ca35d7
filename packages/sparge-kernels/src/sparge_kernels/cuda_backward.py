"""Torch glue of the CUDA block-sparse attention backward (`_C.attention_backward`).

Receives HND views (possibly strided, e.g. NHD transposed), allocates dq/dk/dv in the memory layout of q/k/v
and the float32 workspace (lse·log2e, delta, and the zeroed dQ accumulator unless `deterministic`), and launches
on the caller's current stream. Kernels (csrc/backward/):
  preprocess   delta = rowsum(dO ∘ O) − dlse, lse in log2 units (+inf on empty/padding rows → P = 0)
  dK/dV        one CTA per key block, over the query blocks that kept it (q_index); in the default mode it also
               adds dS·K into an fp32 dQ accumulator (Hopper: per-warp bulk async reduce-adds; else 8-byte
               atomics), then a small kernel converts dQ
  dQ           deterministic=True: one CTA per query block over its kept key blocks (kv_index), no atomics,
               bitwise reproducible (recomputes P and dS)
An operand whose head dim is not unit-stride, or whose pointer/strides are not 16-byte aligned, is copied to a
contiguous tensor first (rare: sliced or odd-strided inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _C  # type: ignore[attr-defined]
from .cuda_limits import KERNEL_DTYPE_NAMES as _DTYPE_NAMES
from .cuda_limits import check_blocks_and_dtype
from .validation import num_blocks

# How the default (non-deterministic) mode accumulates dQ: "bulk" (bulk async reduce-add on SM >= 90, falls back to
# atomics below) or "atomic" (8-byte atomics). Same result up to fp32 summation order; a knob for benchmarks.
dq_accumulate: str = "bulk"

# Test hook: when set to a float, dq/dk/dv are filled with it before the launch, so elements the kernels fail
# to write stay detectable (the tests poison with NaN).
debug_fill_value: float | None = None


def _kernel_ready(x: Tensor) -> Tensor:
    """x itself when the kernels can read it through its strides (16-byte rows), else a contiguous copy."""
    per_16_bytes = 16 // x.element_size()
    aligned = x.data_ptr() % 16 == 0 and all(
        s % per_16_bytes == 0 for s, n in zip(x.stride()[:3], x.shape[:3]) if n > 1
    )
    if x.stride(-1) == 1 and aligned:
        return x
    return x.contiguous()


def _strides(x: Tensor) -> tuple[int, int, int]:
    """(batch, head, row) element strides; a size-1 dim's stride is never used, pass 0."""
    return tuple(s if n > 1 else 0 for s, n in zip(x.stride()[:3], x.shape[:3]))  # type: ignore[return-value]


def _empty_like_layout(x: Tensor) -> Tensor:
    """Uninitialised (B, H, L, D) tensor stored like x: (B, L, H, D) memory when x is an NHD view."""
    b, h, length, d = x.shape
    if h > 1 and x.stride(1) < x.stride(2):
        return torch.empty(b, length, h, d, dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(b, h, length, d, dtype=x.dtype, device=x.device)


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")


def backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dlse: Tensor | None,
    kv_count: Tensor,
    kv_index: Tensor,
    q_count: Tensor,
    q_index: Tensor,
    block_q: int,
    block_k: int,
    scale: float,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backend.backward on HND views: (dq, dk, dv), each (B, H, L, D) in the dtype and memory layout of q, k, v."""
    if dq_accumulate not in ("bulk", "atomic"):
        raise ValueError(f"cuda_backward.dq_accumulate must be 'bulk' or 'atomic', got {dq_accumulate!r}")
    check_blocks_and_dtype("block-sparse attention backward", block_q, block_k, q.dtype)
    for name, t in (("k", k), ("v", v), ("out", out), ("dout", dout)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, L, D), got shape {tuple(q.shape)}")
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if d not in (64, 128):
        raise ValueError(f"the CUDA backward supports head dim 64 and 128, got {d}")
    built = {int(x) for x in _C.build_head_dims.split(",") if x}
    if d not in built:
        raise ValueError(f"head dim {d} has no compiled CUDA kernel (this build has {sorted(built)})")
    _check_shape("k", k, (b, h, lk, d))
    _check_shape("v", v, (b, h, lk, d))
    _check_shape("out", out, (b, h, lq, d))
    _check_shape("dout", dout, (b, h, lq, d))
    _check_shape("lse", lse, (b, h, lq))
    if dlse is not None:
        _check_shape("dlse", dlse, (b, h, lq))
    nq, nk = num_blocks(lq, block_q), num_blocks(lk, block_k)
    _check_shape("kv_count", kv_count, (b, h, nq))
    _check_shape("kv_index", kv_index, (b, h, nq, nk))
    _check_shape("q_count", q_count, (b, h, nk))
    _check_shape("q_index", q_index, (b, h, nk, nq))
    for name, t in (("kv_count", kv_count), ("kv_index", kv_index), ("q_count", q_count), ("q_index", q_index)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")

    q, k, v, out, dout = (_kernel_ready(t) for t in (q, k, v, out, dout))
    lse = lse.to(torch.float32).contiguous()
    dlse = dlse.to(torch.float32).contiguous() if dlse is not None else None
    kv_count, kv_index, q_count, q_index = (t.contiguous() for t in (kv_count, kv_index, q_count, q_index))

    padded = nq * block_q
    f32 = dict(dtype=torch.float32, device=q.device)
    lse_log2 = torch.empty(b, h, padded, **f32)
    delta = torch.empty(b, h, padded, **f32)
    dq_accum = None if deterministic else torch.zeros(b, h, padded, d, **f32)
    dq, dk, dv = _empty_like_layout(q), _empty_like_layout(k), _empty_like_layout(v)
    if debug_fill_value is not None:
        for t in (dq, dk, dv):
            t.fill_(debug_fill_value)
    with torch.cuda.device(q.device):
        _C.attention_backward(
            dtype=_DTYPE_NAMES[q.dtype], batch=b, heads=h, seqlen_q=lq, seqlen_k=lk, head_dim=d,
            block_q=block_q, block_k=block_k,
            q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(), dout=dout.data_ptr(),
            q_strides=_strides(q), k_strides=_strides(k), v_strides=_strides(v), out_strides=_strides(out),
            dout_strides=_strides(dout),
            lse=lse.data_ptr(), dlse=dlse.data_ptr() if dlse is not None else 0,
            kv_count=kv_count.data_ptr(), kv_index=kv_index.data_ptr(),
            q_count=q_count.data_ptr(), q_index=q_index.data_ptr(),
            dq=dq.data_ptr(), dk=dk.data_ptr(), dv=dv.data_ptr(),
            dq_strides=_strides(dq), dk_strides=_strides(dk), dv_strides=_strides(dv),
            lse_log2=lse_log2.data_ptr(), delta=delta.data_ptr(),
            dq_accum=dq_accum.data_ptr() if dq_accum is not None else 0,
            scale=float(scale), deterministic=bool(deterministic), dq_bulk_reduce=dq_accumulate == "bulk",
            stream=torch.cuda.current_stream(q.device).cuda_stream,
        )
    return dq, dk, dv
