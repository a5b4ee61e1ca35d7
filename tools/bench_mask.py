"""Benchmark: CUDA mask prediction (sparge_kernels.cuda_mask) vs the eager PyTorch reference, one GPU.

Inputs: bf16 Q, K as video-like smooth fields over the Wan token grid plus noise (tools/structured_inputs.py),
topk=0.03, topp=0.2, block_q=128, block_k=64. Prints a markdown table per shape: total and per-launch times
(CUDA events, median of repeats), GB/s counted as the bytes of Q and K read once, speedup vs the reference, and
how many (query block, key block) decisions agree with the reference (they may differ only within rounding).

    python tools/bench_mask.py [--iters 50] [--shapes 1.3b,14b]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = {  # name: (B, H, L, D, token grid T×H×W)
    "1.3b": (1, 12, 32760, 128, (21, 30, 52)),
    "14b": (1, 40, 75600, 128, (21, 45, 80)),
}
TOPK, TOPP, BLOCK_Q, BLOCK_K = 0.03, 0.2, 128, 64


def structured_qk(b: int, h: int, grid: tuple[int, int, int], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    try:
        from structured_inputs import smooth_field
    except ImportError:  # standalone fallback: the same construction
        import torch.nn.functional as F

        def smooth_field(batch, heads, grid, head_dim, *, device, generator, noise=0.5, smoothness=4, **_):
            t, hh, w = grid
            coarse = [max(2, -(-n // smoothness)) for n in grid]
            base = torch.randn(batch * heads, head_dim, *coarse, generator=generator, device=device)
            field = F.interpolate(base, size=(t, hh, w), mode="trilinear", align_corners=True)
            field = field.reshape(batch, heads, head_dim, t * hh * w).transpose(-1, -2)
            return field + noise * torch.randn(field.shape, generator=generator, device=device)

    def field():
        return smooth_field(b, h, grid, d, device="cuda", generator=gen)

    shared = field()
    q = (shared + 0.5 * field()).to(torch.bfloat16)
    k = (shared + 0.5 * field()).to(torch.bfloat16)
    return q, k


def time_ms(fn, iters: int, repeats: int = 5) -> float:
    """Eager: median over `repeats` of the mean time of `iters` back-to-back calls (CUDA events; includes any
    Python launch overhead that the GPU cannot hide)."""
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def graph_ms(fn, iters: int, repeats: int = 5) -> float:
    """GPU time per call: `iters` calls captured in one CUDA graph, replayed `repeats` times (median)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    del graph
    return statistics.median(samples)


def bench_shape(name: str, iters: int) -> list[str]:
    import sparge_kernels
    from sparge_kernels import cuda_mask
    from sparge_kernels.block_mask import BlockMask
    from sparge_kernels.options import current_kernel_options
    from sparge_kernels.reference import predict_block_mask_indices, topk_count
    from sparge_kernels.validation import num_blocks

    b, h, length, d, grid = SHAPES[name]
    q, k = structured_qk(b, h, grid, d)
    q, k = q.contiguous(), k.contiguous()  # HND, as after a (B, H, L, D) projection
    q_nhd = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, H, D) memory seen as HND views
    k_nhd = k.transpose(1, 2).contiguous().transpose(1, 2)
    scale = d**-0.5
    nq, nk = num_blocks(length, BLOCK_Q), num_blocks(length, BLOCK_K)
    gbytes = (q.numel() + k.numel()) * q.element_size() / 1e9

    out = (
        torch.empty(b, h, nq, dtype=torch.int32, device="cuda"),
        torch.empty(b, h, nq, nk, dtype=torch.int32, device="cuda"),
        torch.empty(b, h, nk, dtype=torch.int32, device="cuda"),
        torch.empty(b, h, nk, nq, dtype=torch.int32, device="cuda"),
    )
    ws = cuda_mask.MaskWorkspace.allocate(b, h, nq, nk, d, q.device)
    kk = topk_count(TOPK, nk)

    def predict(qq=q, kk_=k, **kw):
        return lambda: cuda_mask.predict(qq, kk_, TOPK, TOPP, BLOCK_Q, BLOCK_K, scale, out=out, **kw)

    t_ref = time_ms(lambda: predict_block_mask_indices(q, k, TOPK, TOPP, BLOCK_Q, BLOCK_K, scale),
                    max(2, iters // 10), 3)

    def public_predict():
        return sparge_kernels.predict_block_mask(q, k, topk=TOPK, topp=TOPP, block_q=BLOCK_Q, block_k=BLOCK_K,
                                                 scale=scale)

    t_eager = {
        "sparge CUDA predict, fused pooling + selection (fused=True)": time_ms(predict(fused=True), iters),
        "sparge CUDA predict, default": time_ms(predict(), iters),
        "public API predict_block_mask, default": time_ms(public_predict, iters),
    }
    with sparge_kernels.kernel_options(mask_schedule="fused"):
        t_eager["public API predict_block_mask, kernel_options(mask_schedule=\"fused\")"] = time_ms(
            public_predict, iters)
    graph_variants = {
        "fused pooling + selection (fused=True)": predict(fused=True),
        "fused, NHD input": predict(q_nhd, k_nhd, fused=True),
        "fused, bisection to the end (compact=False)": predict(compact=False, fused=True),
        "fused, rows in shared memory": predict(register_rows=False, fused=True),
        "default": predict(),
        "default, NHD input": predict(q_nhd, k_nhd),
        "1 head group": predict(head_groups=1),
        "3 head groups": predict(head_groups=3),
        "1 head group, 16 rows/CTA": predict(head_groups=1, rows_per_cta=16),
        "1 head group, 16 rows/CTA, 3xTF32 tensor-core scores (the fused kernel's)": predict(
            head_groups=1, rows_per_cta=16, tensor_scores=True),
        "3 head groups, 3xTF32 tensor-core scores": predict(head_groups=3, tensor_scores=True),
        "automatic head groups, fp32 FMA scores": predict(tensor_scores=False),
    }
    t_graph = {label: graph_ms(fn, iters) for label, fn in graph_variants.items()}

    cuda_mask.pool(q, k, BLOCK_Q, BLOCK_K, ws)
    t_pool = graph_ms(lambda: cuda_mask.pool(q, k, BLOCK_Q, BLOCK_K, ws), iters)
    t_pool_nhd = graph_ms(lambda: cuda_mask.pool(q_nhd, k_nhd, BLOCK_Q, BLOCK_K, ws), iters)
    cuda_mask.pool(q, k, BLOCK_Q, BLOCK_K, ws)
    t_select = {
        (r, c, ts, rr): graph_ms(lambda r=r, c=c, ts=ts, rr=rr: cuda_mask.select(
            ws, nk, scale, kk, TOPP, out[0], out[1], r, c, tensor_scores=ts, register_rows=rr), iters)
        for r in (4, 8, 16, 32)
        for c, ts, rr in ((True, False, False), (False, False, False), (True, True, False), (True, False, True),
                          (True, True, True))
    }
    t_transpose = graph_ms(lambda: cuda_mask.transpose(ws, nk, out[2], out[3]), iters)

    mine = cuda_mask.predict(q, k, TOPK, TOPP, BLOCK_Q, BLOCK_K, scale)
    ref = predict_block_mask_indices(q, k, TOPK, TOPP, BLOCK_Q, BLOCK_K, scale)
    dense_mine = BlockMask(*mine, BLOCK_Q, BLOCK_K, length, length).to_dense()
    dense_ref = BlockMask(*ref, BLOCK_Q, BLOCK_K, length, length).to_dense()
    agree = float((dense_mine == dense_ref).float().mean())
    fused = cuda_mask.predict(q, k, TOPK, TOPP, BLOCK_Q, BLOCK_K, scale, fused=True)
    agree_fused = float((BlockMask(*fused, BLOCK_Q, BLOCK_K, length, length).to_dense() == dense_ref).float().mean())
    density = float(dense_mine.float().mean())

    def row(label: str, ms: float, moved: float | None, speedup: bool = False) -> str:
        gbs = f"{moved / (ms * 1e-3):.0f}" if moved else "-"
        return f"| {label} | {ms:.4f} | {gbs} | {f'{t_ref / ms:.1f}x' if speedup else '-'} |"

    auto_groups = cuda_mask.default_head_groups(h, int(gbytes * 1e9))
    auto_scores = "3xTF32 tensor-core" if cuda_mask.default_tensor_scores(int(gbytes * 1e9)) else "fp32 FMA"
    schedule = current_kernel_options().mask_schedule
    default = ("the fused launch" if cuda_mask.schedule_fuses(schedule, int(gbytes * 1e9)) else
               f"separate launches, {auto_groups} head group(s), {auto_scores} scores")
    lines = [
        f"### {name}: Q, K ({b}, {h}, {length}, {d}) bf16 HND contiguous, Nq={nq}, Nk={nk}, topk={TOPK}, topp={TOPP}",
        "",
        f"density {density:.4f}; decisions equal to the eager reference: {agree:.6f} (fused: {agree_fused:.6f}); "
        f"Q+K = {gbytes * 1e3:.1f} MB; "
        f"default (mask_schedule={schedule!r}) = {default}; fused = one persistent "
        "pooling + selection launch (3xTF32 tensor-core scores), then the transpose. "
        f"Graph rows: {iters} calls captured in one CUDA graph (GPU time).",
        "",
        "| what | ms | GB/s (Q+K once) | speedup vs eager reference |",
        "| --- | --- | --- | --- |",
        *(row(f"**{label}, eager call (Python overhead included)**", t, gbytes, True) for label, t in t_eager.items()),
        *(row(f"sparge CUDA predict, {label}, graph", t, gbytes, True) for label, t in t_graph.items()),
        row("launch 1: pool Q and K (HND), graph", t_pool, gbytes),
        row("launch 1: pool Q and K (NHD), graph", t_pool_nhd, gbytes),
        *(row(f"launch 2: scores + softmax + Top-k/Top-p, {r} rows/CTA{'' if c else ', compact=False'}"
              f"{', 3xTF32 tensor-core scores' if ts else ''}{', rows in registers' if rr else ''}, graph", t, None)
          for (r, c, ts, rr), t in t_select.items()),
        row("launch 3: transpose -> q_count, q_index, graph", t_transpose, None),
        row("eager PyTorch reference (block_probabilities + select_hybrid + indices)", t_ref, gbytes, True),
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--shapes", default="1.3b,14b")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"## Mask prediction benchmark, {datetime.date.today().isoformat()}")
    print()
    print(f"Device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
    print()
    for name in args.shapes.split(","):
        print("\n".join(bench_shape(name.strip(), args.iters)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
