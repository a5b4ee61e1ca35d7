"""Benchmark: block-sparse attention forward on one GPU, against dense SDPA and FlexAttention (same mask).

Shapes (1,12,32760,128) [Wan2.1-1.3B 480p] and (1,40,75600,128) [14B 720p], bf16, HND. Rows per shape:
  dense SDPA (cuDNN), dense SDPA (flash)
  FlexAttention (torch.compile'd, BLOCK_SIZE=(128, 64)) with the identical block mask, per density
  sparge block_sparse_attention at random-mask densities 1.0 / 0.2 / 0.1 / 0.05 (default kernel: the
  Hopper wgmma/TMA one on sm_90), plus the portable mma.sync kernel at 1.0 and 0.05
  mask prediction alone (topk=0.03, topp=0.2) on structured video-like q, k (tools/structured_inputs.py),
  sparge attention on that mask, and sparge_attention (prediction + attention) as the total; the same two at a
  predicted 5% mask (topk=0.05, topp=0: issue 14's "sparge_attention incl. mask vs cuDNN" row), each total
  also as 20 calls replayed from one CUDA graph (GPU time, without the host's launch gaps)
Columns: ms (median, triton.testing.do_bench, else CUDA events), useful TFLOP/s (4·B·H·Lq·Lk·D × kept
fraction: only the kept blocks count), speedup vs dense cuDNN.

    python tools/bench_attention.py [--shapes 1.3b,14b] [--densities 1,0.05] [--out tools/results/x.md] [--backward]

`--backward` adds the rows of BACKWARD_ROWS (functions (ctx) -> list[Row]), a hook for fwd+bwd rows.
`--dq-accumulate bulk|atomic|spill` sets KernelOptions.dq_accumulate for every row that takes the default options
(the fwd+bwd rows; the "backward alone" rows name their mode: SM80 bulk/atomic/deterministic, sm90 atomic and bulk,
sm90 bulk with the persistent schedule (the default) and with one CTA per key block, KernelOptions.backward_schedule,
sm90 with dS spilled;
a fwd+bwd row runs the one-CTA-per-block schedule too); `--ds-spill-gib`, `--ds-spill-head-groups` set the dS
buffer's budget and head groups of every row that spills dS. cuDNN, Flex 128x128 and sparge fwd+bwd are also timed as
GPU work only (GRAPH_FWD_BWD calls in one CUDA graph), next to the eager rows, which count the host's gaps.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mask import graph_ms  # noqa: E402  (tools/ is on the path only from here)

SHAPES = {"1.3b": ((1, 12, 32760, 128), (21, 30, 52)), "14b": ((1, 40, 75600, 128), (21, 45, 80))}
DENSITIES = (1.0, 0.2, 0.1, 0.05)
BLOCK_Q, BLOCK_K = 128, 64
TOPK, TOPP = 0.03, 0.2
GRAPH_CALLS = 20  # sparge_attention calls captured in one CUDA graph for the graph-replay rows
GRAPH_FWD_BWD = 3  # fwd+bwd calls captured in one CUDA graph (each holds its gradients and workspaces)
GRAPH_FWD_BWD_REPEATS = 20  # replays of that graph per row (the median is reported)


@dataclass
class Row:
    label: str
    ms: float
    useful_flops: float  # 0 for rows that are not attention (mask prediction)

    def __post_init__(self) -> None:
        # Each row also goes to stderr when measured: a run cut off by a device time limit keeps what it had.
        print(f"[row] {self.label}: {self.ms:.3f} ms", file=sys.stderr, flush=True)


@dataclass
class ShapeContext:
    """What a row function gets: the shape, inputs and reference timings of one benchmark block."""

    name: str
    shape: tuple[int, int, int, int]
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    masks: dict  # density -> sparge BlockMask
    dense_flops: float
    predicted: tuple  # (q, k, v, mask): video-like inputs and their predicted sparge BlockMask
    backward_densities: tuple[float, ...]  # the densities of masks that the fwd+bwd rows time


# Extra row producers run with --backward (e.g. fwd+bwd rows); each returns rows for one shape.
BACKWARD_ROWS: list[Callable[[ShapeContext], list[Row]]] = []


def time_ms(fn: Callable[[], object], rep_ms: int = 200, min_runs: int = 20) -> float:
    """Median time of fn in ms over at least min_runs timed runs (triton's do_bench, else CUDA events)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    end.synchronize()
    estimate_ms = start.elapsed_time(end) / 3
    # do_bench repeats for rep ms: stretch it so that slow rows (dense fwd+bwd) still get >= min_runs samples.
    rep_ms = max(rep_ms, int((min_runs + 2) * estimate_ms) + 1)
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=max(25, rep_ms // 8), rep=rep_ms, return_mode="median"))
    except ImportError:
        samples = []
        for _ in range(min_runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return statistics.median(samples)


def fwd_bwd_graph_ms(run: Callable[[], object]) -> float:
    """GPU time per call of a fwd+bwd (or backward) callable: GRAPH_FWD_BWD calls captured in one CUDA graph, the
    median of GRAPH_FWD_BWD_REPEATS replays."""
    return graph_ms(run, GRAPH_FWD_BWD, repeats=GRAPH_FWD_BWD_REPEATS)


def random_mask(b, h, lq, lk, density, seed=0, block_k=BLOCK_K):
    """Random kept blocks at the given density; block_k=128 gives Flex's native 128x128 blocks."""
    from sparge_kernels.block_mask import BlockMask
    from sparge_kernels.validation import num_blocks

    g = torch.Generator(device="cuda").manual_seed(seed)
    nq, nk = num_blocks(lq, BLOCK_Q), num_blocks(lk, block_k)
    dense = torch.rand(b, h, nq, nk, generator=g, device="cuda") < density
    return BlockMask.from_dense(dense, block_q=BLOCK_Q, block_k=block_k, seq_len_q=lq, seq_len_k=lk)


def flex_block_mask(mask):
    """The same kept blocks as a FlexAttention BlockMask; kept blocks are full blocks (no mask_mod work)."""
    from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

    index = mask.kv_index.clamp_min(0)
    return FlexBlockMask.from_kv_blocks(
        torch.zeros_like(mask.kv_count), index, mask.kv_count, index, BLOCK_SIZE=(mask.block_q, mask.block_k),
        seq_lengths=(mask.seq_len_q, mask.seq_len_k),
    )


def predicted_inputs(name: str) -> tuple:
    """(q, k, v, mask): video-like bf16 inputs of the shape (tools/structured_inputs.py) and their predicted mask
    (topk=TOPK, topp=TOPP), what the predicted-mask rows of both directions use."""
    from structured_inputs import video_qkv

    import sparge_kernels as sk

    (b, h, _, d), grid = SHAPES[name]
    sq, skk, sv = video_qkv(b, h, grid, d, dtype=torch.bfloat16, device="cuda",
                            generator=torch.Generator(device="cuda").manual_seed(1))
    return sq, skk, sv, sk.predict_block_mask(sq, skk, topk=TOPK, topp=TOPP, scale=d**-0.5)


def bench_shape(name: str, backward: bool, backward_densities: tuple[float, ...] = DENSITIES,
                densities: tuple[float, ...] = DENSITIES) -> list[Row]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    import sparge_kernels as sk

    (b, h, length, d), _ = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, length, d, generator=g, device="cuda").to(torch.bfloat16) for _ in range(3))
    dense_flops = 4.0 * b * h * length * length * d
    scale = d**-0.5
    rows: list[Row] = []

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return run

    with torch.no_grad():
        rows.append(Row("dense SDPA (cuDNN)", time_ms(sdpa(SDPBackend.CUDNN_ATTENTION)), dense_flops))
        rows.append(Row("dense SDPA (flash)", time_ms(sdpa(SDPBackend.FLASH_ATTENTION)), dense_flops))

        flex = torch.compile(flex_attention, dynamic=False)
        masks = {}
        for density in densities:
            mask = masks[density] = random_mask(b, h, length, length, density)
            kept = mask.density
            fbm = flex_block_mask(mask)
            t_flex = time_ms(lambda fbm=fbm: flex(q, k, v, block_mask=fbm, scale=scale))
            rows.append(Row(f"FlexAttention, random mask density {density:g} (kept {kept:.3f})", t_flex,
                            dense_flops * kept))
            t = time_ms(lambda m=mask: sk.block_sparse_attention(q, k, v, m, scale=scale))
            rows.append(Row(f"**sparge**, random mask density {density:g} (kept {kept:.3f})", t, dense_flops * kept))

        # The portable mma.sync kernel on the same masks, for comparison with the default (Hopper) kernel.
        with sk.kernel_options(forward_path="sm80"):
            for density in (x for x in (1.0, 0.05) if x in masks):
                mask = masks[density]
                t = time_ms(lambda m=mask: sk.block_sparse_attention(q, k, v, m, scale=scale))
                rows.append(Row(f"sparge portable mma.sync kernel, random mask density {density:g}", t,
                                dense_flops * mask.density))

        # Masks predicted from structured (video-like) inputs.
        sq, skk, sv, pmask = predicted_inputs(name)
        kept = pmask.density
        t_pred = time_ms(lambda: sk.predict_block_mask(sq, skk, topk=TOPK, topp=TOPP, scale=scale))
        rows.append(Row(f"mask prediction alone (topk={TOPK}, topp={TOPP}; density {kept:.3f})", t_pred, 0.0))
        fbm = flex_block_mask(pmask)
        rows.append(Row(f"FlexAttention, predicted mask (density {kept:.3f})",
                        time_ms(lambda: flex(sq, skk, sv, block_mask=fbm, scale=scale)), dense_flops * kept))
        # Attention alone and sparge_attention end to end (prediction included) on that mask, and on a predicted
        # 5% mask (Top-k alone pins the density: issue 14's "incl. mask vs cuDNN" row).
        mask5 = sk.predict_block_mask(sq, skk, topk=0.05, topp=0.0, scale=scale)
        for what, topk, topp, mask in (("predicted mask", TOPK, TOPP, pmask),
                                       ("predicted 5% mask (topk=0.05, topp=0)", 0.05, 0.0, mask5)):
            rows.append(Row(f"sparge attention only, {what} (density {mask.density:.3f})",
                            time_ms(lambda m=mask: sk.block_sparse_attention(sq, skk, sv, m, scale=scale)),
                            dense_flops * mask.density))
            total = (lambda tk=topk, tp=topp: sk.sparge_attention(sq, skk, sv, topk=tk, topp=tp, scale=scale))
            rows.append(Row(f"**sparge total: prediction + attention**, {what} (density {mask.density:.3f})",
                            time_ms(total), dense_flops * mask.density))
            # The same GPU work without the host's launch time between the kernels (do_bench's runs start
            # after an L2 flush, so an eager call also times the Python between the mask and attention launches).
            rows.append(Row(f"sparge total, {what}, {GRAPH_CALLS} calls in one CUDA graph (density "
                            f"{mask.density:.3f})", graph_ms(total, GRAPH_CALLS), dense_flops * mask.density))
        # The 5%-density random mask with prediction time added.
        if 0.05 in masks:
            t5 = next(r.ms for r in rows if r.label.startswith("**sparge**, random mask density 0.05"))
            rows.append(Row(f"sparge density 0.05 + mask prediction ({t5:.3f} + {t_pred:.3f} ms)", t5 + t_pred,
                            dense_flops * masks[0.05].density))
    if backward:
        ctx = ShapeContext(name, (b, h, length, d), q, k, v, masks, dense_flops, (sq, skk, sv, pmask),
                           backward_densities)
        for producer in BACKWARD_ROWS:
            rows.extend(producer(ctx))
    torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Forward+backward rows (issue 5, the block-sparse backward): registered in BACKWARD_ROWS, run with --backward.
# Each row times one forward plus torch.autograd.grad of (q, k, v) for a fixed random dout. The table's speedup
# column is against dense cuDNN *forward*; the labels carry the speedup against dense cuDNN fwd+bwd.
# Useful FLOPs: fwd+bwd = 3.5 × forward (the backward's five GEMMs are 2.5 × the forward's two), bwd alone = 2.5 ×.
def fwd_bwd_rows(ctx: ShapeContext, with_flex: bool = True, with_flash: bool = True) -> list[Row]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    import sparge_kernels as sk
    from sparge_kernels import cuda_backward
    from sparge_kernels.backend import MaskArgs
    from sparge_kernels.options import current_kernel_options
    from sparge_kernels.validation import KernelNotBuiltError, check_kernel_path

    b, h, length, d = ctx.shape
    scale = d**-0.5
    dout = torch.randn(ctx.q.shape, generator=torch.Generator(device="cuda").manual_seed(2), device="cuda")
    dout = dout.to(ctx.q.dtype)

    def fwd_bwd(attend, inputs=(ctx.q, ctx.k, ctx.v)):
        q, k, v = (x.detach().requires_grad_() for x in inputs)

        def run():
            return torch.autograd.grad(attend(q, k, v), (q, k, v), dout)

        return run

    def sdpa(backend):
        def attend(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return attend

    rows: list[Row] = []
    # The Hopper backward's rows (backward_path="sm90") where this GPU and build have it.
    try:
        capability = torch.cuda.get_device_capability(ctx.q.device)
        check_kernel_path("backward_path", "sm90", sk.cuda._C.build_archs, capability)
        hopper_backward = True
    except KernelNotBuiltError:
        hopper_backward = False
    t_ref = time_ms(fwd_bwd(sdpa(SDPBackend.CUDNN_ATTENTION)))

    def add(label: str, ms: float, flops: float) -> None:
        rows.append(Row(f"{label} ({t_ref / ms:.2f}x vs cuDNN fwd+bwd)", ms, flops))

    # The eager rows time from an event recorded before the host enqueues the call, so Python and autograd gaps
    # between a call's kernels count. The graph rows time the same fwd+bwd as GPU work only, every peer alike:
    # GRAPH_FWD_BWD calls captured in one CUDA graph, against cuDNN's the same way.
    def graph_time(label: str, run: Callable[[], object]) -> float | None:
        try:
            return fwd_bwd_graph_ms(run)
        except Exception as exc:  # a capture failure is reported; the other rows still run
            print(f"{label}: CUDA graph capture failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr,
                  flush=True)
            return None

    cudnn_label = "dense SDPA (cuDNN) fwd+bwd"
    t_ref_graph = graph_time(cudnn_label, fwd_bwd(sdpa(SDPBackend.CUDNN_ATTENTION)))

    def add_graph(label: str, run: Callable[[], object], flops: float) -> None:
        ms = graph_time(label, run) if t_ref_graph is not None else None
        if ms is not None:
            rows.append(Row(f"{label}, {GRAPH_FWD_BWD} in one CUDA graph ({t_ref_graph / ms:.2f}x vs cuDNN the "
                            "same way)", ms, flops))

    add(cudnn_label, t_ref, 3.5 * ctx.dense_flops)
    if t_ref_graph is not None:
        rows.append(Row(f"{cudnn_label}, {GRAPH_FWD_BWD} in one CUDA graph", t_ref_graph, 3.5 * ctx.dense_flops))
    if with_flash:
        add("dense SDPA (flash) fwd+bwd", time_ms(fwd_bwd(sdpa(SDPBackend.FLASH_ATTENTION))), 3.5 * ctx.dense_flops)
    # Flex autotunes its tiles: its default backward tile on sm90 (BLOCK_N1 = 128) does not divide 64-key blocks,
    # so the default mode finds no valid kernel (NoValidChoicesError); max-autotune also gives Flex its best tile.
    flex = torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")

    def flex_row(label: str, fbm, flops: float, inputs=(ctx.q, ctx.k, ctx.v)) -> None:
        nonlocal with_flex
        if not with_flex:
            return
        try:
            t = time_ms(fwd_bwd(lambda q, k, v: flex(q, k, v, block_mask=fbm, scale=scale), inputs))
            add(label, t, flops)
        except Exception as exc:  # a peer's failure is reported; the other rows still run
            print(f"{label} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            with_flex = False

    def sparge_rows(what: str, mask, kept: float) -> None:
        attend = lambda q, k, v: sk.block_sparse_attention(q, k, v, mask, scale=scale)  # noqa: E731
        add(f"**sparge fwd+bwd**, {what}", time_ms(fwd_bwd(attend)), 3.5 * ctx.dense_flops * kept)
        add_graph(f"**sparge fwd+bwd**, {what}", fwd_bwd(attend), 3.5 * ctx.dense_flops * kept)
        if hopper_backward:
            with sk.kernel_options(backward_schedule="tile"):  # read when autograd launches the backward
                add(f"sparge fwd+bwd (sm90 backward, one CTA per key block), {what}", time_ms(fwd_bwd(attend)),
                    3.5 * ctx.dense_flops * kept)
            with sk.kernel_options(backward_path="sm80"):
                add(f"sparge fwd+bwd (SM80 backward), {what}", time_ms(fwd_bwd(attend)), 3.5 * ctx.dense_flops * kept)

    for density in ctx.backward_densities:
        mask = ctx.masks[density]
        kept = mask.density
        what = f"random mask density {density:g} (kept {kept:.3f})"
        flex_row(f"FlexAttention fwd+bwd, same 128x64 mask, {what}", flex_block_mask(mask),
                 3.5 * ctx.dense_flops * kept)
        if density < 1:
            native = random_mask(b, h, length, length, density, block_k=128)
            native_label = f"FlexAttention fwd+bwd, 128x128 blocks, density {density:g} (kept {native.density:.3f})"
            native_fbm = flex_block_mask(native)
            flex_row(native_label, native_fbm, 3.5 * ctx.dense_flops * native.density)
            if with_flex:
                add_graph(native_label, fwd_bwd(lambda q, k, v, fbm=native_fbm: flex(q, k, v, block_mask=fbm,
                                                                                       scale=scale)),
                          3.5 * ctx.dense_flops * native.density)
        sparge_rows(what, mask, kept)
        with torch.no_grad():
            out, lse = sk.block_sparse_attention(ctx.q, ctx.k, ctx.v, mask, scale=scale, return_lse=True)
        idx = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, BLOCK_Q, BLOCK_K, scale)
        modes = [("SM80, bulk-reduce dQ", "bulk", False, "sm80", "tile"),
                 ("SM80, atomic dQ", "atomic", False, "sm80", "tile"),
                 ("SM80, deterministic dQ", "bulk", True, "sm80", "tile")]
        if hopper_backward:
            modes += [("sm90 wgmma, atomic dQ", "atomic", False, "sm90", "persistent"),
                      ("sm90 wgmma, bulk-reduce dQ, one CTA per key block", "bulk", False, "sm90", "tile"),
                      ("sm90 wgmma, bulk-reduce dQ, persistent schedule", "bulk", False, "sm90", "persistent"),
                      ("sm90 wgmma, dS spilled + sm90 dQ kernel, persistent schedule", "spill", False, "sm90",
                       "persistent"),
                      ("sm90 wgmma, dS spilled, deterministic", "spill", True, "sm90", "persistent"),
                      ("sm90 wgmma dK/dV + SM80 dQ, deterministic", "bulk", True, "sm90", "tile")]
        for mode, accumulate, det, path, schedule in modes:
            # the options in force (the spill buffer's budget and head groups from the command line), this mode's
            options = replace(current_kernel_options(), dq_accumulate=accumulate, backward_path=path,
                              backward_schedule=schedule, debug_fill=None)

            def bwd(det=det, options=options, out=out, lse=lse, idx=idx):
                m = MaskArgs(*idx, deterministic=det)
                return cuda_backward.backward(dout, ctx.q, ctx.k, ctx.v, out, lse, None, m, options=options)

            label = f"sparge backward alone ({mode}), {what}"
            allocs = torch.cuda.memory_stats().get("num_device_alloc", 0)
            add(label, time_ms(bwd), 2.5 * ctx.dense_flops * kept)
            # cudaMalloc calls while timing (the caching allocator should serve every call after the first)
            print(f"{label}: {torch.cuda.memory_stats().get('num_device_alloc', 0) - allocs} cudaMalloc calls "
                  "while timed", file=sys.stderr, flush=True)
            # GPU time only: the eager row also counts the host's glue (allocations, launches) where the GPU
            # waits for it, as it does after do_bench's L2 flush.
            if path == "sm90":
                ms = graph_time(label, bwd)
                if ms is not None:
                    rows.append(Row(f"{label}, {GRAPH_FWD_BWD} in one CUDA graph (GPU time)", ms,
                                    2.5 * ctx.dense_flops * kept))

    # Masks predicted from video-like inputs: sparge_attention (prediction + attention) trains through both.
    sq, skk, sv, pmask = ctx.predicted
    what = f"predicted mask (topk={TOPK}, topp={TOPP}; density {pmask.density:.3f})"
    flex_row(f"FlexAttention fwd+bwd, {what}", flex_block_mask(pmask), 3.5 * ctx.dense_flops * pmask.density,
             (sq, skk, sv))
    t = time_ms(fwd_bwd(lambda q, k, v: sk.sparge_attention(q, k, v, topk=TOPK, topp=TOPP, scale=scale),
                        (sq, skk, sv)))
    add(f"**sparge_attention fwd+bwd (prediction included)**, {what}", t, 3.5 * ctx.dense_flops * pmask.density)
    return rows


BACKWARD_ROWS.append(fwd_bwd_rows)


def table(name: str, rows: list[Row]) -> str:
    (b, h, length, d), _ = SHAPES[name]
    ref = rows[0].ms
    lines = [f"### ({b}, {h}, {length}, {d}) bf16 ({name})", "",
             "| row | ms | useful TFLOP/s | speedup vs dense cuDNN |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        tflops = f"{r.useful_flops / r.ms / 1e9:.0f}" if r.useful_flops else "-"
        lines.append(f"| {r.label} | {r.ms:.3f} | {tflops} | {ref / r.ms:.2f}x |")
    return "\n".join(lines)


def backward_densities(spec: str, shape: str,
                       benchmarked: tuple[float, ...] = DENSITIES) -> tuple[float, ...]:
    """The fwd+bwd densities for one shape from --backward-densities ('1,0.05' or '1.3b=1,0.05;14b=0.05')."""
    per_shape = dict(part.split("=", 1) for part in spec.split(";")) if "=" in spec else {shape: spec}
    if shape not in per_shape:
        return ()
    densities = tuple(float(x) for x in per_shape[shape].split(",") if x)
    unknown = [x for x in densities if x not in benchmarked]
    if unknown:
        raise SystemExit(f"--backward-densities: {unknown} not among the benchmarked densities {benchmarked}")
    return densities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1.3b,14b")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    parser.add_argument("--backward", action="store_true", help="add the BACKWARD_ROWS hook's rows")
    parser.add_argument("--backward-densities", default="1,0.2,0.1,0.05",
                        help="mask densities of the fwd+bwd rows, per shape as name=d1,d2;... "
                             "or one list for every shape (e.g. '1.3b=1,0.2,0.1,0.05;14b=0.05')")
    parser.add_argument("--densities", default=",".join(f"{x:g}" for x in DENSITIES),
                        help=f"random-mask densities of the forward rows, a subset of {DENSITIES} (default: all)")
    parser.add_argument("--dq-accumulate", choices=("bulk", "atomic", "spill"), default=None,
                        help="KernelOptions.dq_accumulate of the rows with default options (default: the default)")
    parser.add_argument("--ds-spill-gib", type=float, default=None,
                        help="KernelOptions.ds_spill_bytes in GiB, for every row that spills dS")
    parser.add_argument("--ds-spill-head-groups", type=int, default=None,
                        help="KernelOptions.ds_spill_head_groups, for every row that spills dS")
    args = parser.parse_args()
    densities = tuple(float(x) for x in args.densities.split(",") if x)
    if not densities or any(x not in DENSITIES for x in densities):
        raise SystemExit(f"--densities: {args.densities!r} is not a subset of {DENSITIES}")
    import sparge_kernels as sk

    if not sk.cuda_available():
        raise SystemExit("sparge_kernels._C is not built: nothing to benchmark")
    props = torch.cuda.get_device_properties(0)
    header = (f"## sparge attention forward benchmark\n\n{props.name}, torch {torch.__version__}, "
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Median ms; useful TFLOP/s "
              "counts only kept blocks (4·B·H·Lq·Lk·D·density).\n")
    if args.dq_accumulate is not None:
        header += f"\nKernelOptions.dq_accumulate={args.dq_accumulate!r} for the rows with default options.\n"
    scope = {} if args.dq_accumulate is None else {"dq_accumulate": args.dq_accumulate}
    if args.ds_spill_gib is not None:
        scope["ds_spill_bytes"] = int(args.ds_spill_gib * 2**30)
    if args.ds_spill_head_groups is not None:
        scope["ds_spill_head_groups"] = args.ds_spill_head_groups
    if len(scope) > ("dq_accumulate" in scope):
        header += "\nSpill buffer: " + ", ".join(f"KernelOptions.{k}={v!r}" for k, v in scope.items()
                                                 if k != "dq_accumulate") + ".\n"
    parts = [header]
    with sk.kernel_options(**scope):
        for name in args.shapes.split(","):
            bwd = backward_densities(args.backward_densities, name, densities) if args.backward else ()
            parts.append(table(name, bench_shape(name, args.backward, bwd, densities)))
            print(parts[-1], "\n", flush=True)
    text = "\n\n".join(parts) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
