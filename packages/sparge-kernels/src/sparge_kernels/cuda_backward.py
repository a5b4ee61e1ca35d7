"""Torch glue of the CUDA block-sparse attention backward (`_C.attention_backward`).

Receives HND views (possibly strided, e.g. NHD transposed), allocates dq/dk/dv in the memory layout of q/k/v
and the float32 workspace (lse·log2e, delta, and the dQ accumulator unless `deterministic`: zeroed, except in the
dS spill mode, whose kernels zero the blocks they use), and launches
on the caller's current stream. Tensors go to `_C` as they are (pointer, dtype, shape, strides read by
csrc/common/tensor_caster.h; None for an absent dlse / dq_accum). Kernels (csrc/backward/):
  preprocess   delta = rowsum(dO ∘ O) − dlse, lse in log2 units (+inf on empty/padding rows → P = 0)
  dK/dV        one CTA per key block, over the query blocks that kept it (q_index); in the default mode it also
               adds dS·K into an fp32 dQ accumulator (Hopper: per-warp bulk async reduce-adds; else 8-byte
               atomics), then a small kernel converts dQ. On sm_90 GPUs with a 90a build ("auto", or
               KernelOptions.backward_path="sm90") the warp-specialised Hopper kernel runs instead (wgmma + TMA,
               dQ by 8-byte atomics)
  dQ           deterministic=True: one CTA per query block over its kept key blocks (kv_index), no atomics,
               bitwise reproducible (recomputes P and dS); the dK/dV kernel then skips dQ. The Hopper dK/dV
               kernel where the Hopper path runs ("auto" or "sm90"), else the SM80 one
  dS spill     KernelOptions.dq_accumulate="spill" on the Hopper path: the dK/dV kernel writes the dS tiles of
               key blocks that fit a buffer, a Hopper kernel sums dQ = dS·K per query block (fixed order); key
               blocks that do not fit take the bulk path, or, deterministic=True, leave their query blocks to the
               SM80 dQ kernel. KernelOptions.ds_spill_head_groups (0: automatic): one launch sequence per group
               of heads, on views of the tensors, reusing one buffer
An operand whose head dim is not unit-stride, or whose pointer/strides are not 16-byte aligned, is copied to a
contiguous tensor first (rare: sliced or odd-strided inputs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .cuda import _C, current_stream, empty_like_layout, kernel_ready
from .options import KernelOptions, current_kernel_options
from .validation import check_attention_kernel_args, check_kernel_path, hopper_kernels_run, num_blocks

if TYPE_CHECKING:  # backend.py imports this module
    from .backend import MaskArgs


def backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dlse: Tensor | None,
    m: MaskArgs,
    *,
    options: KernelOptions | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backend.backward on HND views: (dq, dk, dv), each (B, H, L, D) in the dtype and memory layout of q, k, v.

    `m` gives the kept-block lists in both directions, the block sizes, the scale and the dQ mode. `options`
    (default: `current_kernel_options()`, read here, at launch) picks the dK/dV kernel (`backward_path`;
    deterministic=True adds the SM80 dQ kernel after it), the dQ accumulation and the debug fill.
    Shapes were checked by the public API; out and dout come from the forward and autograd.
    """
    options = options if options is not None else current_kernel_options()
    block_q, block_k, scale, deterministic = m.block_q, m.block_k, m.scale, m.deterministic
    b, h, lq, d = q.shape
    check_attention_kernel_args("block-sparse attention backward", q.dtype, d, block_q, block_k, _C)
    for name, t in (("out", out), ("dout", dout)):  # the kernels read them as q's dtype
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    capability = torch.cuda.get_device_capability(q.device)
    check_kernel_path("backward_path", options.backward_path, _C.build_archs, capability)

    q, k, v, out, dout = (kernel_ready(t) for t in (q, k, v, out, dout))
    lse = lse.to(torch.float32).contiguous()
    dlse = dlse.to(torch.float32).contiguous() if dlse is not None else None
    dq, dk, dv = empty_like_layout(q), empty_like_layout(k), empty_like_layout(v)
    if options.debug_fill is not None:
        for t in (dq, dk, dv):
            t.fill_(options.debug_fill)
    nq, nk = num_blocks(lq, block_q), m.q_count.shape[-1]
    groups, ds_spill = [(0, h)], None
    if options.dq_accumulate == "spill":
        # One dS buffer, reused group after group (the stream orders each group's kernels after the previous
        # ones'); without one (SM80 kernels, no budget) the bulk path takes all heads at once.
        spill_groups, tiles = spill_layout(b, h, nq, nk, block_q, block_k, q.element_size(), options)
        largest = max(h1 - h0 for h0, h1 in spill_groups)
        ds_spill = _ds_spill_buffer(q, b * largest * nq * nk, tiles, block_q, block_k, options, capability)
        if ds_spill is not None:
            groups = spill_groups
    tensors = dict(q=q, k=k, v=v, out=out, dout=dout, lse=lse, dlse=dlse, dq=dq, dk=dk, dv=dv,
                   kv_count=m.kv_count, kv_index=m.kv_index, q_count=m.q_count, q_index=m.q_index)
    with torch.cuda.device(q.device):
        for h0, h1 in groups:
            # A group's heads: views of the operands and gradients (the kernels follow strides), its mask rows
            group = tensors if len(groups) == 1 else {
                name: t[:, h0:h1] if t is not None else None for name, t in tensors.items()}
            _launch_group(group, ds_spill, block_q, block_k, scale, deterministic, options)
    return dq, dk, dv


# The mask density auto_spill_head_groups sizes the groups for (SpargeAttention2's operating point), and the
# share of tiles to spare beyond it.
SPILL_GROUPS_DENSITY = 0.05
SPILL_GROUPS_HEADROOM = 1.25


def auto_spill_head_groups(batch: int, heads: int, nq: int, nk: int, block_q: int, block_k: int, itemsize: int,
                           budget_bytes: int) -> int:
    """ds_spill_head_groups=0: the fewest head groups whose tiles at SPILL_GROUPS_DENSITY, with
    SPILL_GROUPS_HEADROOM to spare, fit `budget_bytes` (the host does not know the mask's density without a sync;
    key blocks that do not fit still take the bulk path)."""
    need = SPILL_GROUPS_HEADROOM * SPILL_GROUPS_DENSITY * batch * heads * nq * nk * block_q * block_k * itemsize
    return max(1, min(heads, math.ceil(need / max(budget_bytes, 1))))


def spill_head_groups(heads: int, groups: int) -> list[tuple[int, int]]:
    """[h0, h1) ranges of `groups` consecutive, near-equal head groups (at most one per head)."""
    groups = min(groups, heads)
    return [(heads * g // groups, heads * (g + 1) // groups) for g in range(groups)]


def spill_layout(batch: int, heads: int, nq: int, nk: int, block_q: int, block_k: int, itemsize: int,
                 options: KernelOptions) -> tuple[list[tuple[int, int]], int]:
    """What "spill" uses under `options`: its head groups (ds_spill_head_groups, 0: automatic) and the tiles of
    its one dS buffer (the budget, at most the largest group's dense tiles). The backward glue and
    sparge-train's memory planner both size it here."""
    count = options.ds_spill_head_groups or auto_spill_head_groups(batch, heads, nq, nk, block_q, block_k, itemsize,
                                                                   options.ds_spill_bytes)
    groups = spill_head_groups(heads, count)
    largest = max(h1 - h0 for h0, h1 in groups)
    return groups, ds_spill_tiles(batch, largest, nq, nk, block_q, block_k, itemsize, options.ds_spill_bytes)


def _launch_group(t: dict, ds_spill: Tensor | None, block_q: int, block_k: int, scale: float, deterministic: bool,
                  options: KernelOptions) -> None:
    """One `_C.attention_backward` over the heads of `t` (all of them, or a spill head group): its workspace, its
    spill pair numbering, its tile counter."""
    q = t["q"]
    b, h, lq, d = q.shape
    lse, dlse = _buffer(t["lse"]), _buffer(t["dlse"]) if t["dlse"] is not None else None
    kv_count, kv_index, q_count, q_index = (_buffer(t[n]) for n in ("kv_count", "kv_index", "q_count", "q_index"))
    padded = num_blocks(lq, block_q) * block_q
    f32 = dict(dtype=torch.float32, device=q.device)
    lse_log2 = torch.empty(b, h, padded, **f32)
    delta = torch.empty(b, h, padded, **f32)
    spill = _ds_spill_numbering(ds_spill, q_count, num_blocks(lq, block_q)) if ds_spill is not None else None
    # The spill mode zeroes only the accumulator blocks its bulk path adds into (the kernels' pair numbering).
    dq_accum = None if deterministic else (torch.empty if spill else torch.zeros)(b, h, padded, d, **f32)
    if options.debug_fill is not None and spill and dq_accum is not None:
        dq_accum.fill_(options.debug_fill)  # where the kernels must zero what they use of it
    # The persistent schedule's tile counter: one per call (never shared between streams); the caching allocator
    # reuses it only for later work on this stream, so it outlives the kernel.
    # (deterministic=True runs one CTA per key block, except in the spill mode)
    persistent = options.backward_schedule == "persistent" and (spill is not None or not deterministic)
    counter = torch.empty(1, dtype=torch.int32, device=q.device) if persistent else None
    _C.attention_backward(
        q=q, k=t["k"], v=t["v"], out=t["out"], dout=t["dout"], lse=lse, dlse=dlse,
        kv_count=kv_count, kv_index=kv_index, q_count=q_count, q_index=q_index,
        dq=t["dq"], dk=t["dk"], dv=t["dv"], lse_log2=lse_log2, delta=delta, dq_accum=dq_accum,
        block_q=block_q, block_k=block_k, scale=float(scale), deterministic=bool(deterministic),
        # "spill" falls back to bulk (key blocks past the buffer; no spill buffers at all), never to atomics
        dq_bulk_reduce=options.dq_accumulate != "atomic", stream=current_stream(q.device),
        path=options.backward_path,
        tile_counter=counter.data_ptr() if counter is not None else 0,
        **(spill or {}),
    )


def ds_spill_tiles(batch: int, heads: int, nq: int, nk: int, block_q: int, block_k: int, itemsize: int,
                   budget_bytes: int) -> int:
    """How many (block_q x block_k) dS tiles the spill buffer holds: what `budget_bytes` allows, never more than
    a dense mask has pairs (0: no buffer, every key block takes the bulk path)."""
    return min(budget_bytes // (block_q * block_k * itemsize), batch * heads * nq * nk)


def _buffer(t: Tensor) -> Tensor:
    """t as the kernels index a buffer: contiguous, 16-byte aligned (a head group's slice of a contiguous tensor is
    contiguous, but may start mid-way through a 16-byte word)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _ds_spill_buffer(q: Tensor, group_pairs: int, tiles: int, block_q: int, block_k: int, options: KernelOptions,
                     capability: tuple[int, int]) -> Tensor | None:
    """The `dq_accumulate="spill"` dS buffer of the Hopper kernels (`tiles` of them, spill_layout's), or None where
    the Hopper backward cannot run (SM80 kernels: bulk), a group's B·h·Nq·Nk pairs would overflow the kernels'
    int32 numbering, or nothing would fit."""
    if options.backward_path == "sm80" or not hopper_kernels_run(_C.build_archs, capability):
        return None
    if group_pairs >= 2**31 or tiles == 0:
        return None
    return torch.empty(tiles, block_q, block_k, dtype=q.dtype, device=q.device)


def _ds_spill_numbering(ds_spill: Tensor, q_count: Tensor, nq: int) -> dict[str, Tensor]:
    """The spill arguments of `_C.attention_backward` for the heads of `q_count`: the buffer, the key blocks'
    pair numbering (key-block-major cumulative counts) and the pair map workspace."""
    b, h, nk = q_count.shape
    return dict(
        ds_spill=ds_spill,
        q_end=torch.cumsum(q_count.view(-1), 0, dtype=torch.int32).view(b, h, nk),
        kv_pair=torch.empty(b, h, nq, nk, dtype=torch.int32, device=q_count.device),
    )
