"""Torch glue of the CUDA mask prediction (csrc/mask): the `predict` entry point of the CUDA backend.

Three kernels, launched by one call into the extension:
  1. pool      one pass over Q and K, one warp per block: block means in fp32 (q_pooled (B,H,Nq,D), k_pooled_t
               (B,H,D,Nk))
  2. select    per query block: scores · scale, softmax, hybrid Top-k ∪ Top-p -> kv_count, kv_index, row bitmask
  3. transpose q_count, q_index from the row bitmask
With `fused`, kernels 1 and 2 are one persistent launch (csrc/mask/pool_select_fused.cuh): CTAs take pooling
and selection tasks from a global ticket counter, so the memory-bound pooling of some heads overlaps the
issue-bound selection of others. On sm_90 GPUs the next kernel is launched with programmatic dependent launch:
scheduled while the one before it drains, it waits on the device for its results (hides the launch gaps).
Without fusion, head_groups > 1 processes the heads in groups: pooling of group g+1 (memory-bound, caller's
stream) overlaps selection of group g (a high-priority side stream joined back before returning).
Selection rule (select_row.cuh): exactly the reference's, with fp32 cumulative masses; exact float ties of the
probabilities go to the lower key-block index (the reference's stable sort). The Top-k count and "keep every
block" come from the reference (`topk_count`, `keeps_every_block`). float64 inputs and head dims above 256 are
outside the kernels and go to the PyTorch reference, with a warning. Arguments were checked by the public API.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch

from . import reference
from .cuda import _C, current_stream
from .options import current_kernel_options
from .validation import num_blocks

__all__ = ["predict", "MaskWorkspace"]

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


@dataclass
class MaskWorkspace:
    """Intermediates between the launches (fp32 pooled blocks, the row bitmask): views of the one float32 buffer
    whose layout `_C.mask_workspace_layout` gives (each view 512-byte aligned). For the stage functions, tests and
    benchmarks; `predict` hands the kernels the bare buffer (`workspace_floats`), which saves the views' host
    time."""

    q_pooled: torch.Tensor  # (B, H, Nq, D) float32
    k_pooled_t: torch.Tensor  # (B, H, D, k_ld) float32
    row_bits: torch.Tensor  # (B, H, Nq, ceil(Nk / 32)) int32 (bit patterns)

    @classmethod
    def allocate(cls, b: int, h: int, nq: int, nk: int, d: int, device: torch.device) -> MaskWorkspace:
        total, q_at, k_at, bits_at, k_ld, words, _ = _workspace_layout(b, h, nq, nk, d)
        flat = torch.empty(total, dtype=torch.float32, device=device)
        views = []
        for start, shape in ((q_at, (b, h, nq, d)), (k_at, (b, h, d, k_ld)), (bits_at, (b, h, nq, words))):
            views.append(flat[start:start + math.prod(shape)].view(shape))
        q_pooled, k_pooled_t, row_bits = views
        return cls(q_pooled, k_pooled_t, row_bits.view(torch.int32))


@functools.lru_cache(maxsize=64)
def _workspace_layout(b: int, h: int, nq: int, nk: int, d: int) -> tuple[int, int, int, int, int, int, int]:
    return tuple(_C.mask_workspace_layout(b, h, nq, nk, d))


def workspace_floats(b: int, h: int, nq: int, nk: int, d: int) -> int:
    """Size of the float32 buffer that `_C.mask_predict` takes as its workspace."""
    return _workspace_layout(b, h, nq, nk, d)[0]


def pool(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, ws: MaskWorkspace) -> None:
    """Launch 1: block means of q and k (HND views, D stride 1) into ws.q_pooled / ws.k_pooled_t."""
    for name, t in (("q", q), ("k", k)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride along D for the pooling kernel, got {t.stride()}")
    _C.mask_pool_blocks(q, k, block_q, block_k, ws.q_pooled, ws.k_pooled_t, current_stream(q.device))


def select(
    ws: MaskWorkspace, nk: int, scale: float, kk: int, topp: float, kv_count: torch.Tensor, kv_index: torch.Tensor,
    rows_per_cta: int = 0, compact: bool = True, tensor_scores: bool = False, register_rows: bool | None = None,
) -> None:
    """Launch 2: scores, softmax and Top-k ∪ Top-p per query block into kv_count / kv_index / ws.row_bits."""
    _check_blocks("kv_index", kv_index, nk)
    if register_rows is None:
        register_rows = default_register_rows(nk, tensor_scores)
    _C.mask_select_blocks(
        ws.q_pooled, ws.k_pooled_t, float(scale), int(kk), float(topp), int(compact), kv_count, kv_index,
        ws.row_bits, int(rows_per_cta), current_stream(ws.q_pooled.device), tensor_scores=int(tensor_scores),
        register_rows=int(register_rows),
    )


def transpose(ws: MaskWorkspace, nk: int, q_count: torch.Tensor, q_index: torch.Tensor) -> None:
    """Launch 3: q_count / q_index from ws.row_bits."""
    _check_blocks("q_count", q_count, nk)
    _C.mask_transpose(ws.row_bits, q_count, q_index, current_stream(ws.row_bits.device))


def _check_blocks(name: str, t: torch.Tensor, nk: int) -> None:
    """The kernels take Nk from the shape of `t` (its last dim): it must be the nk the caller means."""
    if t.shape[-1] != nk:
        raise ValueError(f"{name} has {t.shape[-1]} key blocks in its last dim, expected nk={nk}")


def _keep_all(b: int, h: int, nq: int, nk: int, device: torch.device, out) -> tuple[torch.Tensor, ...]:
    kv_count = torch.full((b, h, nq), nk, dtype=torch.int32, device=device)
    kv_index = torch.arange(nk, dtype=torch.int32, device=device).expand(b, h, nq, nk)
    q_count = torch.full((b, h, nk), nq, dtype=torch.int32, device=device)
    q_index = torch.arange(nq, dtype=torch.int32, device=device).expand(b, h, nk, nq)
    result = (kv_count, kv_index, q_count, q_index)
    if out is None:
        return tuple(t.contiguous() for t in result)
    for dst, src in zip(out, result):
        dst.copy_(src)
    return tuple(out)


def _check_out(out, shapes, device) -> None:
    names = ("kv_count", "kv_index", "q_count", "q_index")
    if len(out) != 4:
        raise ValueError(f"out must hold 4 tensors {names}, got {len(out)}")
    for name, t, shape in zip(names, out, shapes):
        if t.dtype != torch.int32 or tuple(t.shape) != shape or t.device != device or not t.is_contiguous():
            raise ValueError(f"out {name} must be a contiguous int32 tensor of shape {shape} on {device}")


def predict(
    q: torch.Tensor,
    k: torch.Tensor,
    topk: float,
    topp: float,
    block_q: int,
    block_k: int,
    scale: float,
    *,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    head_groups: int = 0,
    rows_per_cta: int = 0,
    tail_rows_per_cta: int | None = None,
    compact: bool = True,
    tensor_scores: bool | None = None,
    register_rows: bool | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hybrid Top-k ∪ Top-p block mask of HND views q (B,H,Lq,D), k (B,H,Lk,D) on the GPU.

    Returns (kv_count (B,H,Nq), kv_index (B,H,Nq,Nk), q_count (B,H,Nk), q_index (B,H,Nk,Nq)), int32, in the
    `BlockMask` convention (indices ascending, then -1). `out` supplies those four buffers (contiguous).
    Tuning (results never depend on it): `head_groups` (0: automatic, 1: no overlap), `rows_per_cta` (0, 4,
    8, 16, 32: query blocks per selection CTA, 0 automatic), `tail_rows_per_cta` for the last group (0: as
    rows_per_cta; None: `default_tail_rows_per_cta`),
    `compact` (resolve the last <= 32 candidates in registers instead of bisecting to the end) and
    `register_rows` (each warp keeps its score row in registers during the selection where Nk <= 512, or
    Nk <= 1280 with at most 16 rows per CTA; else in shared memory; None: `default_register_rows`).
    `tensor_scores`: the pooled scores by 3xTF32 tensor-core MMAs (True) or fp32 FMAs (False); None picks by size
    (`default_tensor_scores`). Not a pure tuning knob: the scores round differently, so decisions may differ
    between the two where they lie within the rounding band that tests/test_cuda_mask.py allows. Within one
    choice, results never depend on the tuning arguments above.
    `fused`: pooling and selection in one persistent launch with tensor-core scores and 16 query blocks per
    selection task (head_groups, rows_per_cta and tail_rows_per_cta do not apply); the same results as the
    separate launches with tensor_scores=True. True: fused, or ValueError where the fused kernel does not take the
    inputs (float32, or rows that do not allow 16-byte loads); False: separate launches; None: as
    `current_kernel_options().mask_schedule` says ("fused", or "auto" where Q+K >= 1 GiB (`default_fused`): fused
    where the kernel takes the inputs and none of the separate launches' knobs above is given nor
    tensor_scores=False, else separate launches).
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    nq, nk = num_blocks(lq, block_q), num_blocks(lk, block_k)
    device = q.device
    if out is not None:
        _check_out(out, ((b, h, nq), (b, h, nq, nk), (b, h, nk), (b, h, nk, nq)), device)
    if reference.keeps_every_block(topk, topp):
        return _keep_all(b, h, nq, nk, device, out)
    if q.dtype not in KERNEL_DTYPES or d > MAX_HEAD_DIM:
        if fused:
            raise ValueError(f"fused=True: the fused kernel takes float16/bfloat16 Q and K with head dim <= "
                             f"{MAX_HEAD_DIM}, got {q.dtype}, D={d}")
        warnings.warn(
            f"sparge CUDA mask kernels take float16/bfloat16/float32 and head dim <= {MAX_HEAD_DIM}; "
            f"got {q.dtype}, D={d}: using the PyTorch reference",
            stacklevel=2,
        )
        result = reference.predict_block_mask_indices(q, k, topk, topp, block_q, block_k, scale)
        if out is None:
            return result
        for dst, src in zip(out, result):
            dst.copy_(src)
        return tuple(out)
    # The kernels read rows with unit stride along D; anything else is copied once.
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()

    if out is None:
        out = (
            torch.empty(b, h, nq, dtype=torch.int32, device=device),
            torch.empty(b, h, nq, nk, dtype=torch.int32, device=device),
            torch.empty(b, h, nk, dtype=torch.int32, device=device),
            torch.empty(b, h, nk, nq, dtype=torch.int32, device=device),
        )
    kv_count, kv_index, q_count, q_index = out
    qk_bytes = (q.numel() + k.numel()) * q.element_size()
    if fused is None:
        fused_mode = int(schedule_fuses(current_kernel_options().mask_schedule, qk_bytes)
                         and head_groups <= 0 and rows_per_cta == 0 and tail_rows_per_cta is None
                         and tensor_scores is not False)  # 1: where the kernel takes the inputs
    elif fused and tensor_scores is False:
        raise ValueError("fused=True scores on tensor cores: tensor_scores must be None or True")
    else:
        fused_mode = 2 if fused else 0
    if fused_mode:
        tensor_scores = True
    if head_groups <= 0:
        head_groups = default_head_groups(h, qk_bytes)
    if tensor_scores is None:
        tensor_scores = default_tensor_scores(qk_bytes)
    if tail_rows_per_cta is None:
        tail_rows_per_cta = default_tail_rows_per_cta(tensor_scores)
    if register_rows is None:
        register_rows = default_register_rows(nk, tensor_scores, fused=bool(fused_mode))
    with torch.cuda.device(device):
        workspace = torch.empty(workspace_floats(b, h, nq, nk, d), dtype=torch.float32, device=device)
        _C.mask_predict(
            q, k, block_q, block_k, float(scale), reference.topk_count(topk, nk), float(topp), int(compact),
            workspace, kv_count, kv_index, q_count, q_index,
            int(head_groups), int(rows_per_cta), int(tail_rows_per_cta), current_stream(device),
            tensor_scores=int(tensor_scores), register_rows=int(register_rows), fused=fused_mode,
        )
    return kv_count, kv_index, q_count, q_index


# Q+K from which the size-based defaults below switch to their large-input choice (the 14B shape is 1.5 GB, the
# 1.3B one 0.2 GB).
LARGE_QK_BYTES = 1 << 30


def default_head_groups(heads: int, qk_bytes: int) -> int:
    """Head groups that overlap selection with pooling, for large inputs (Q+K >= 1 GiB). Measured on an H200
    (tools/results/mask_select_lean_h200_2026-12-04.md): 3 groups predict the 14B shape (1.5 GB) in 0.799 and
    0.801 ms against 0.815 and 0.817 with 4 and 0.813 with 1 (two runs); on the 1.3B shape (0.2 GB) any grouping
    costs (0.095 ms with 1 group, 0.107 with 3)."""
    return min(heads, 3) if qk_bytes >= LARGE_QK_BYTES else 1


def default_tensor_scores(qk_bytes: int) -> bool:
    """Separate launches (fused=False): tensor-core scores for large inputs (Q+K >= 1 GiB), fp32 FMAs below.
    Measured on an H200 (tools/results/mask_tensor_scores_h200_2026-12-04.md): with the automatic tuning, the
    14B shape (1.5 GB) predicts in 0.958 ms with tensor-core scores against 0.984 ms, the 1.3B shape (0.2 GB) in
    0.108 against 0.100 ms (its 8-row selection CTAs leave most of each 16-row MMA tile empty)."""
    return qk_bytes >= LARGE_QK_BYTES


def default_tail_rows_per_cta(tensor_scores: bool) -> int:
    """The last head group's query blocks per selection CTA: as the other groups' with tensor-core scores (their
    MMA tiles are 16 rows; the 14B prediction took 0.913 ms against 0.958 with an 8-row tail on an H200,
    tools/results/mask_defaults_h200_2026-12-04.md), 8 with fp32 FMA scores (smaller CTAs shorten the part of the
    last group that cannot overlap; H100, tools/results/mask_2026-11-23.md)."""
    return 0 if tensor_scores else 8


def default_register_rows(nk: int, tensor_scores: bool = False, fused: bool = False) -> bool:
    """Rows in registers where 16 words per lane hold them (Nk <= 512: the 1.3B shape's selection 0.0351 against
    0.0382 ms, the whole prediction 0.0972 against 0.0990 ms on an H200), and up to 40 words (Nk <= 1280) with
    tensor-core scores in separate launches (16-row CTAs: the 14B shape's selection 0.378 against 0.388 ms on an
    H200, tools/results/mask_select_lean_h200_2026-12-04.md); other rows in shared memory (with fp32 FMA scores
    and 8-row CTAs the 14B shape's 40-word rows lose, 0.602 against 0.539 ms; in the fused kernel, whose pooling
    shares the registers, 0.779 against 0.759 ms, tools/results/mask_fused_h200_2026-12-05.md)."""
    return nk <= 512 or (tensor_scores and not fused and nk <= 1280)


def default_fused(qk_bytes: int) -> bool:
    """mask_schedule="auto": the fused pooling + selection kernel for large inputs (Q+K >= 1 GiB), separate
    launches below. Measured on an H200 (tools/results/mask_fused_h200_2026-12-05.md): the 14B shape (1.5 GB)
    predicts in 0.781 ms eager (0.779 in a graph) fused against 0.822 (0.799) separate; the 1.3B shape (0.2 GB,
    192 selection tasks for 264 resident CTAs) in 0.101 against 0.098 (0.100 against 0.096)."""
    return qk_bytes >= LARGE_QK_BYTES


def schedule_fuses(schedule: str, qk_bytes: int) -> bool:
    """Whether KernelOptions.mask_schedule picks the fused kernel for Q+K of `qk_bytes` ("fused"; "auto" by
    `default_fused`)."""
    return schedule == "fused" or (schedule == "auto" and default_fused(qk_bytes))
