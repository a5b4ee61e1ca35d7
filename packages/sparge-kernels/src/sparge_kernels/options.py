"""Kernel choices that never change results beyond rounding: which forward and backward kernel, how dQ is
accumulated, how the mask prediction is scheduled, and a debug fill of the outputs. One frozen `KernelOptions`,
set for a scope with `kernel_options(...)`:

    with sparge_kernels.kernel_options(forward_path="sm80", dq_accumulate="atomic"):
        out = sparge_kernels.sparge_attention(q, k, v)
        out.backward(dout)

The CUDA glue (cuda_forward.py, cuda_backward.py) reads `current_kernel_options()` when a kernel launches, inside
the custom ops' eager implementations and never in traced code, so the options apply under
torch.compile(fullgraph=True) and CUDA graph capture too (a captured graph keeps the kernels chosen at capture).
The glue functions also take `options=` explicitly.

The setting is process-wide, like `torch.backends.cudnn.flags()`, not thread-local: the autograd engine runs the
backward of CUDA tensors in its own per-device threads, where a thread-local or contextvar setting of the caller
would not be seen. Set it from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["KernelOptions", "current_kernel_options", "kernel_options"]

FORWARD_PATHS = ("auto", "sm80", "sm90")
BACKWARD_PATHS = ("auto", "sm80", "sm90")
DQ_ACCUMULATE = ("bulk", "atomic", "spill")
BACKWARD_SCHEDULES = ("tile", "persistent")
MASK_SCHEDULES = ("auto", "separate", "fused")


@dataclass(frozen=True)
class KernelOptions:
    """Kernel choices of the CUDA backend; the reference ignores them.

    forward_path: "auto" (the Hopper wgmma/TMA kernel on sm_90 GPUs when the wheel was built for 90a, else the
        portable mma.sync kernel), "sm80" or "sm90". The default comes from SPARGE_FORWARD_PATH, else "auto".
    dq_accumulate: how the backward makes dQ. In the default (non-deterministic) mode: "bulk" (bulk async reduce-adds
        from shared memory on SM >= 90, atomics below) or "atomic" (8-byte atomics). Same result up to fp32
        summation order. Both backward paths honour it (the "sm90" one: per-warp bulk reduce-adds of its dQ
        fragments into a fragment-ordered buffer, or atomics into the row-major one). "spill" (Hopper path only;
        elsewhere it is "bulk"): the dK/dV kernel writes each kept (query block, key block) tile of dS, in q's
        dtype, to a buffer of at most `ds_spill_bytes` instead of adding dS·K into the accumulator, and a second
        Hopper kernel sums dQ = dS·K per query block in a fixed order; key blocks whose tiles do not fit take the
        bulk path. dQ is then bitwise reproducible when every tile fits (the dQ GEMM reads the same bf16/fp16 dS
        it does in the other modes). deterministic=True ignores "bulk" and "atomic"; with "spill" on the Hopper
        path it runs the spill kernels too, and query blocks with a key block that did not fit get their dQ from
        the SM80 per-query-block kernel (each query block's dQ in one fixed order: bitwise reproducible).
        The default comes from SPARGE_DQ_ACCUMULATE, else "spill" (on an H200 it was faster than "bulk" at every
        density measured: 1.964 against 2.384 ms at 1.3B and 5%, 35.2 against 48.3 ms at 14B in head groups, and
        the deterministic backward 2.02 against 3.14 ms; tools/results/bwd_spill_h200_2026-12-05.md).
    ds_spill_bytes: the largest dS spill buffer "spill" allocates, in bytes (default 2 GiB: every tile of the
        (1, 12, 32760, 128) shape at 5% density, 1.3 GB, fits). The buffer is min(this, what a dense mask would
        need); 0 sends every key block down the bulk path.
    ds_spill_head_groups: "spill" runs the backward over this many consecutive groups of heads, one after the
        other, each reusing the whole dS buffer, so that the buffer need only hold one group's tiles. 0 (the
        default): enough groups for the tiles of a 5% mask with 25% to spare (`cuda_backward.auto_spill_head_groups`:
        1 on the (1, 12, 32760, 128) shape, 14 on the (1, 40, 75600, 128) one, whose 22.9 GB of tiles at 5% then fit
        2 GiB; each the fastest measured there, tools/results/bwd_spill_h200_2026-12-05.md). Small groups cost
        where one would do (12 groups took 2.62 against 1.96 ms at 1.3B, 5%).
        dK and dV do not depend on it; dQ only through which tiles fit (the bulk path's fp32 summation order).
    debug_fill: None, or a float written into every output before the launch, so elements a kernel fails to write
        stay detectable (the tests poison with NaN).
    backward_path: the backward's dK/dV kernel (in both modes): "sm80" (mma.sync), "sm90" (the
        warp-specialised Hopper wgmma/TMA kernel: an sm_90 GPU and a build for 90a, else an error) or "auto".
        "auto" picks "sm90" where it can run (sm_90 GPU, 90a build, TMA-walkable strides), else "sm80".
        deterministic=True on the Hopper path runs the spill kernels (dq_accumulate="spill", the default), or with
        "bulk"/"atomic" the Hopper dK/dV kernel without dQ, then the SM80 per-query-block dQ kernel (1.58x the SM80
        pair at 1.3B 5% on an H200); on "sm80" both SM80 kernels. The
        default comes from SPARGE_BACKWARD_PATH, else "auto".
    backward_schedule: how the Hopper dK/dV kernel spreads key blocks over the GPU: "tile" (one CTA per key block)
        or "persistent" (one CTA per SM taking key blocks from an atomic counter, loading the next block's operands
        while it finishes the current one). The same gradients up to the fp32 order of dQ's accumulation; the SM80
        kernels ignore it. "persistent" is the default: on an H200 it won or tied 7 of 9 comparisons (up to 8%
        faster on the 1.3B shape, within 3% either way elsewhere; tools/results/bwd_schedules_h200_2026-12-04.md).
    mask_schedule: how the mask prediction runs its pooling and selection: "separate" (two launches, with head
        groups on a side stream for large inputs; fp32 FMA or 3xTF32 scores by size) or "fused" (one persistent
        launch taking both kinds of task from a ticket counter, 3xTF32 scores; separate launches where it does not
        take the inputs: float32, or rows that do not allow 16-byte loads). Decisions may differ between the two
        only within the scores' rounding band. "auto" (the default): "fused" for large inputs (Q+K >= 1 GiB, where
        it was faster on an H200: the 14B shape 0.781 against 0.822 ms), "separate" below (the 1.3B shape 0.098
        against 0.101 ms; `cuda_mask.default_fused`).
    """

    forward_path: str = "auto"
    dq_accumulate: str = "spill"
    debug_fill: float | None = None
    backward_path: str = "auto"  # after the older fields: positional KernelOptions(forward_path, ...) still holds
    backward_schedule: str = "persistent"
    mask_schedule: str = "auto"
    ds_spill_bytes: int = 2 << 30
    ds_spill_head_groups: int = 0

    def __post_init__(self) -> None:
        if self.forward_path not in FORWARD_PATHS:
            raise ValueError(f"KernelOptions.forward_path must be one of {FORWARD_PATHS}, got {self.forward_path!r}")
        if self.backward_path not in BACKWARD_PATHS:
            raise ValueError(
                f"KernelOptions.backward_path must be one of {BACKWARD_PATHS}, got {self.backward_path!r}"
            )
        if self.backward_schedule not in BACKWARD_SCHEDULES:
            raise ValueError(
                f"KernelOptions.backward_schedule must be one of {BACKWARD_SCHEDULES}, got {self.backward_schedule!r}"
            )
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"KernelOptions.mask_schedule must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}")
        if self.dq_accumulate not in DQ_ACCUMULATE:
            raise ValueError(
                f"KernelOptions.dq_accumulate must be one of {DQ_ACCUMULATE}, got {self.dq_accumulate!r}"
            )
        budget = self.ds_spill_bytes
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise TypeError(f"KernelOptions.ds_spill_bytes must be an int, got {type(budget).__name__}")
        if budget < 0:
            raise ValueError(f"KernelOptions.ds_spill_bytes must be >= 0, got {budget}")
        groups = self.ds_spill_head_groups
        if isinstance(groups, bool) or not isinstance(groups, int):
            raise TypeError(f"KernelOptions.ds_spill_head_groups must be an int, got {type(groups).__name__}")
        if groups < 0:
            raise ValueError(f"KernelOptions.ds_spill_head_groups must be >= 0 (0: automatic), got {groups}")
        fill = self.debug_fill
        if fill is not None:
            if isinstance(fill, bool) or not isinstance(fill, (int, float)):
                raise TypeError(f"KernelOptions.debug_fill must be a float or None, got {type(fill).__name__}")
            object.__setattr__(self, "debug_fill", float(fill))


def _defaults() -> KernelOptions:
    env = os.environ
    return _defaults_for(env.get("SPARGE_FORWARD_PATH", "auto"), env.get("SPARGE_BACKWARD_PATH", "auto"),
                         env.get("SPARGE_DQ_ACCUMULATE", "spill"))


@functools.lru_cache(maxsize=16)
def _defaults_for(path: str, backward: str, dq_accumulate: str) -> KernelOptions:
    """The defaults for these environment values, built once (every kernel launch asks; a bad value raises and
    is not cached)."""
    for name, value, allowed in (("SPARGE_FORWARD_PATH", path, FORWARD_PATHS),
                                 ("SPARGE_BACKWARD_PATH", backward, BACKWARD_PATHS),
                                 ("SPARGE_DQ_ACCUMULATE", dq_accumulate, DQ_ACCUMULATE)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return KernelOptions(forward_path=path, backward_path=backward, dq_accumulate=dq_accumulate)


# None: no kernel_options() scope is active, the defaults (SPARGE_FORWARD_PATH, SPARGE_BACKWARD_PATH,
# SPARGE_DQ_ACCUMULATE) apply.
_active: KernelOptions | None = None


def current_kernel_options() -> KernelOptions:
    """The options in force: the innermost `kernel_options()` scope, else the defaults."""
    return _active if _active is not None else _defaults()


@contextmanager
def kernel_options(options: KernelOptions | None = None, **fields: object) -> Iterator[KernelOptions]:
    """Use `options` (default: the options in force) with `fields` replaced for the body; restored on exit and
    on error. Yields the options in force inside. Unknown fields and bad values raise, naming the field."""
    global _active
    known = {f.name for f in dataclasses.fields(KernelOptions)}
    for name in fields:
        if name not in known:
            raise TypeError(f"kernel_options got an unknown field {name!r}; KernelOptions has {sorted(known)}")
    base = options if options is not None else current_kernel_options()
    if not isinstance(base, KernelOptions):
        raise TypeError(f"kernel_options takes a KernelOptions, got {type(base).__name__}")
    new = dataclasses.replace(base, **fields)
    previous, _active = _active, new
    try:
        yield new
    finally:
        _active = previous
