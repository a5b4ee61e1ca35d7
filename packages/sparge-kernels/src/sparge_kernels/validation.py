"""Argument checks, all of them: bad input raises an error that names the argument.

The public API (api.py) checks what every backend needs; the CUDA glue adds what only the compiled kernels
need (`check_attention_kernel_args`, `check_kernel_path`). Nothing is checked twice on the
way to a kernel.
"""

from __future__ import annotations

import math

import torch

LAYOUTS = ("HND", "NHD")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_layout(layout: object) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def to_hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """View (B, L, H, D) as (B, H, L, D) when layout is NHD; never copies."""
    return x.transpose(1, 2) if layout == "NHD" else x


def check_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, layout: str
) -> tuple[int, int, int, int, int]:
    """Validate q, k (and v) and return (B, H, Lq, Lk, D)."""
    named = [("q", q), ("k", k)] + ([("v", v)] if v is not None else [])
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            dims = "(B, H, L, D)" if layout == "HND" else "(B, L, H, D)"
            raise ValueError(f"{name} must be 4-D {dims} for layout={layout!r}, got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    for name, t in named[1:]:
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}")
    qh, kh = to_hnd(q, layout), to_hnd(k, layout)
    b, h, lq, d = qh.shape
    _, _, lk, _ = kh.shape
    if kh.shape[0] != b or kh.shape[1] != h:
        raise ValueError(f"k has (batch, heads) {tuple(kh.shape[:2])} but q has {(b, h)} (layout={layout!r})")
    if kh.shape[3] != d:
        raise ValueError(f"k has head dim {kh.shape[3]} but q has {d}")
    if v is not None:
        vh = to_hnd(v, layout)
        if vh.shape != kh.shape:
            raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if b == 0 or h == 0 or d == 0:
        raise ValueError(f"q has an empty batch, head or head-dim axis: shape {tuple(q.shape)}")
    if lq == 0:
        raise ValueError("q has an empty sequence (Lq == 0)")
    if lk == 0:
        raise ValueError("k has an empty sequence (Lk == 0)")
    return b, h, lq, lk, d


def check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_topk_topp(topk: object, topp: object) -> tuple[float, float]:
    topk_f, topp_f = check_fraction("topk", topk), check_fraction("topp", topp)
    if topk_f == 0.0 and topp_f == 0.0:
        raise ValueError("topk and topp are both 0: at least one selection rule must be enabled")
    return topk_f, topp_f


MAX_BLOCK = 2**31 - 1  # block sizes and lengths cross into the kernels and the custom ops as 32-bit ints


def check_block_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if not 0 < value <= MAX_BLOCK:
        raise ValueError(f"{name} must be a positive int at most {MAX_BLOCK}, got {value!r}")
    return value


def resolve_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0.0:
        raise ValueError(f"scale must be a finite positive float, got {scale}")
    return scale


def num_blocks(length: int, block: int) -> int:
    return -(-length // block)


def check_mask_fits(mask: object, b: int, h: int, lq: int, lk: int, device: torch.device) -> None:
    from .block_mask import BlockMask

    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a sparge_kernels.BlockMask, got {type(mask).__name__}")
    if mask.seq_len_q != lq or mask.seq_len_k != lk:
        raise ValueError(
            f"mask was built for (Lq, Lk) = ({mask.seq_len_q}, {mask.seq_len_k}) but q, k have ({lq}, {lk})"
        )
    expected = (b, h, num_blocks(lq, mask.block_q), num_blocks(lk, mask.block_k))
    if tuple(mask.kv_index.shape) != expected:
        raise ValueError(f"mask has shape {tuple(mask.kv_index.shape)} but q, k need (B, H, Nq, Nk) = {expected}")
    transposed = (b, h, expected[3], expected[2])
    if tuple(mask.q_index.shape) != transposed:
        raise ValueError(f"mask.q_index has shape {tuple(mask.q_index.shape)}, expected {transposed}")
    for name in ("kv_count", "kv_index", "q_count", "q_index"):
        t = getattr(mask, name)
        if t.dtype != torch.int32:
            raise TypeError(f"mask.{name} must be int32, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"mask.{name} is on {t.device} but q is on {device}")


# ------------------------------------------------------------------------- what the compiled kernels accept
ATTENTION_KERNEL_BLOCKS = (128, 64)  # (block_q, block_k) of the compiled attention forward and backward
ATTENTION_KERNEL_HEAD_DIMS = (64, 128)
# dtype -> the name the attention bindings take, and the name in _C.build_dtypes
ATTENTION_KERNEL_DTYPES = {torch.bfloat16: ("bfloat16", "bf16"), torch.float16: ("float16", "fp16")}


class KernelNotBuiltError(ValueError):
    """A variant (head dim, dtype, arch) that the kernels have but this build did not compile, or this GPU
    cannot run. Its own type so a caller can tell "rebuild or reinstall" from a bad argument (the GPU tests
    skip on it)."""


def check_attention_kernel_args(
    kernel: str, dtype: torch.dtype, head_dim: int, block_q: int, block_k: int, build: object
) -> str:
    """Raise, naming `kernel`, for what the compiled attention kernels lack; returns the bindings' dtype name.

    `build` says what was compiled: `_C`, or anything with its `build_head_dims` / `build_dtypes` strings
    ("64,128" / "bf16,fp16").
    """
    build_head_dims, build_dtypes = build.build_head_dims, build.build_dtypes
    if (block_q, block_k) != ATTENTION_KERNEL_BLOCKS:
        raise ValueError(
            f"the CUDA {kernel} supports block_q=128 and block_k=64 only, got block_q={block_q}, "
            f"block_k={block_k} (set SPARGE_BACKEND=reference for other block sizes)"
        )
    if dtype not in ATTENTION_KERNEL_DTYPES:
        raise TypeError(
            f"the CUDA {kernel} takes float16 or bfloat16 q, k, v, got {dtype} (cast, or set SPARGE_BACKEND=reference)"
        )
    if head_dim not in ATTENTION_KERNEL_HEAD_DIMS:
        raise ValueError(
            f"the CUDA {kernel} has no head dim {head_dim}, only {ATTENTION_KERNEL_HEAD_DIMS} "
            "(set SPARGE_BACKEND=reference for others)"
        )
    binding_name, build_name = ATTENTION_KERNEL_DTYPES[dtype]
    if str(head_dim) not in build_head_dims.split(",") or build_name not in build_dtypes.split(","):
        raise KernelNotBuiltError(
            f"head dim {head_dim} {binding_name} has no compiled CUDA {kernel} kernel in this build (head dims "
            f"{build_head_dims}, dtypes {build_dtypes}): install the release wheel, or rebuild with "
            "SPARGE_HEAD_DIMS / SPARGE_DTYPES"
        )
    return binding_name


def hopper_kernels_run(build_archs: str, capability: tuple[int, int]) -> bool:
    """Whether the Hopper (sm90) kernels can run: a build for 90a and an sm_90 GPU."""
    return "90a" in build_archs.split(",") and tuple(capability) == (9, 0)


def check_kernel_path(option: str, path: str, build_archs: str, capability: tuple[int, int]) -> None:
    """`option` ("forward_path" or "backward_path") = "sm90" needs the Hopper kernel: a build for 90a and an sm_90
    GPU."""
    if path == "sm90" and not hopper_kernels_run(build_archs, capability):
        raise KernelNotBuiltError(
            f"{option}='sm90' needs an sm_90 GPU and a build for 90a; this GPU has compute capability "
            f"{capability[0]}.{capability[1]}, this build has archs {build_archs} (use {option}='auto')"
        )
