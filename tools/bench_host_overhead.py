"""Host time per call of the sparge entry points (GPU; the Python and launch work that a CUDA graph removes).

On a tiny problem (B=1, H=1, L=1024, D=128 bf16: a few microseconds of GPU work per call) the GPU waits for the
host, so the wall time of `calls` back-to-back calls divided by `calls` is the host's time per call. Prints a
markdown table of the entry points and of the pieces of the mask glue (`cuda_mask.predict`), then (stderr)
cProfile's top functions for `sparge_attention`:

    python3 tools/bench_host_overhead.py [--calls 2000] [--backward]

With --backward: the training path instead (fwd+bwd per dQ mode, the backward glue alone, cProfile of fwd+bwd).

With --dispatch-only (any machine, CPU tensors): the cost of the `sparge` ops themselves, i.e. each entry point
with a stub backend whose predict/forward return preallocated outputs, so what remains is dispatch, argument
checks and packing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable

import torch


def per_call_us(fn: Callable[[], object], calls: int, warmup: int = 50) -> float:
    def sync():
        if torch.cuda.is_initialized():  # --dispatch-only runs on CPU tensors
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls * 1e6


def dispatch_only(calls: int) -> None:
    from unittest import mock

    import sparge_kernels as sk
    from sparge_kernels import backend, ops

    q, k, v = (torch.randn(1, 1, 1024, 128, dtype=torch.bfloat16) for _ in range(3))
    i32 = dict(dtype=torch.int32)
    mask = (torch.zeros(1, 1, 8, **i32), torch.zeros(1, 1, 8, 16, **i32), torch.zeros(1, 1, 16, **i32),
            torch.zeros(1, 1, 16, 8, **i32))
    out, lse = torch.empty_like(q), torch.empty(1, 1, 1024)
    stub = backend.Backend(predict=lambda *_: mask, forward=lambda *_: (out, lse), backward=None)
    mask_args = (*mask, 128, 64, 0.125, "HND", False)
    rows = {
        "op sparge::predict_block_mask": lambda: ops.predict_block_mask_op(q, k, 0.05, 0.0, 128, 64, 0.125, "HND"),
        "op sparge::block_sparse_attention (autograd registered; no input requires grad)": lambda: (
            ops.block_sparse_attention_op(q, k, v, *mask_args)),
        "public predict_block_mask": lambda: sk.predict_block_mask(q, k, topk=0.05, topp=0.0, scale=0.125),
        "public sparge_attention": lambda: sk.sparge_attention(q, k, v, topk=0.05, topp=0.0, scale=0.125),
    }
    print(f"torch {torch.__version__}, CPU tensors (1, 1, 1024, 128) bf16, stub backend; {calls} calls each\n")
    print("| entry point (stub backend) | host µs per call |\n|---|---:|")
    with mock.patch.object(ops, "backend_for", lambda device: stub):
        for label, fn in rows.items():
            print(f"| {label} | {per_call_us(fn, calls, warmup=200):.1f} |", flush=True)


def profile_top(fn: Callable[[], object], calls: int, top: int = 25) -> str:
    """cProfile's top functions (own time) of `calls` calls of fn."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def backward_host(calls: int) -> None:
    """Host time of the training path: what the GPU waits for where its kernels are shorter than the host's work
    (fwd+bwd eager against a CUDA graph of the same calls)."""
    import sparge_kernels as sk
    from sparge_kernels import cuda_backward
    from sparge_kernels.backend import MaskArgs
    from sparge_kernels.options import current_kernel_options

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(1, 1, 1024, 128, generator=g, device="cuda").to(torch.bfloat16) for _ in range(4))
    scale = 128**-0.5
    mask = sk.predict_block_mask(q, k, topk=0.05, topp=0.0, scale=scale)
    with torch.no_grad():
        out, lse = sk.block_sparse_attention(q, k, v, mask, scale=scale, return_lse=True)
    args = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale)
    qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd_bwd():
        return torch.autograd.grad(sk.block_sparse_attention(qq, kk, vv, mask, scale=scale), (qq, kk, vv), dout)

    print(f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}; {calls} calls each, "
          "(1, 1, 1024, 128) bf16, predicted 5% mask\n")
    print("| entry point | host µs per call |\n|---|---:|")
    for mode in ("spill", "bulk"):
        with sk.kernel_options(dq_accumulate=mode):
            options = current_kernel_options()
            rows = {
                f"fwd+bwd: block_sparse_attention + torch.autograd.grad, {mode} dQ": fwd_bwd,
                f"cuda_backward.backward (the backward glue alone), {mode} dQ": lambda options=options: (
                    cuda_backward.backward(dout, q, k, v, out, lse, None, args, options=options)),
            }
            for label, fn in rows.items():
                print(f"| {label} | {per_call_us(fn, calls):.1f} |", flush=True)
    with sk.kernel_options(dq_accumulate="spill"):
        print(profile_top(fwd_bwd, calls), file=sys.stderr)


def main() -> None:
    import sparge_kernels as sk
    from sparge_kernels import cuda_mask, reference
    from sparge_kernels.cuda import _C, current_stream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--dispatch-only", action="store_true", help="the ops' own cost, CPU tensors, stub backend")
    parser.add_argument("--backward", action="store_true",
                        help="the training entry points instead: fwd+bwd per dQ mode and the backward glue alone")
    args = parser.parse_args()
    if args.dispatch_only:
        return dispatch_only(args.calls)
    if args.backward:
        return backward_host(args.calls)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1, 1024, 128, generator=g, device="cuda").to(torch.bfloat16) for _ in range(3))
    scale = 128**-0.5
    mask = sk.predict_block_mask(q, k, topk=0.05, topp=0.0, scale=scale)
    rows = {
        "cuda_mask.predict (the CUDA glue)": lambda: cuda_mask.predict(q, k, 0.05, 0.0, 128, 64, scale),
        "predict_block_mask (public API)": lambda: sk.predict_block_mask(q, k, topk=0.05, topp=0.0, scale=scale),
        "block_sparse_attention (public API)": lambda: sk.block_sparse_attention(q, k, v, mask, scale=scale),
        "sparge_attention (public API)": lambda: sk.sparge_attention(q, k, v, topk=0.05, topp=0.0, scale=scale),
    }
    # The glue's pieces, each alone (`predict` does them once per call).
    device = q.device
    nq, nk = 8, 16
    out = tuple(torch.empty(s, dtype=torch.int32, device=device) for s in ((1, 1, nq), (1, 1, nq, nk), (1, 1, nk),
                                                                         (1, 1, nk, nq)))
    ws = cuda_mask.MaskWorkspace.allocate(1, 1, nq, nk, 128, device)
    workspace = torch.empty(cuda_mask.workspace_floats(1, 1, nq, nk, 128), dtype=torch.float32, device=device)

    def launch_only():
        _C.mask_predict(q, k, 128, 64, scale, reference.topk_count(0.05, nk), 0.0, 1, workspace, *out, 1, 0, 0,
                        current_stream(device), tensor_scores=0, register_rows=1)

    def device_scope():
        with torch.cuda.device(device):
            pass

    pieces = {
        "piece: `_C.mask_predict` alone (7 tensor casts, 3 launches), buffers preallocated": launch_only,
        "piece: `_C.mask_pool_blocks` alone (6 casts, 1 launch)": lambda: _C.mask_pool_blocks(
            q, k, 128, 64, ws.q_pooled, ws.k_pooled_t, current_stream(device)),
        "piece: one `torch.empty` on the GPU": lambda: torch.empty(1, 1, nq, nk, dtype=torch.int32, device=device),
        "piece: `MaskWorkspace.allocate` (the stage functions' views)": lambda: cuda_mask.MaskWorkspace.allocate(
            1, 1, nq, nk, 128, device),
        "piece: the workspace of `predict` (one `torch.empty`)": lambda: torch.empty(
            cuda_mask.workspace_floats(1, 1, nq, nk, 128), dtype=torch.float32, device=device),
        "piece: `with torch.cuda.device(device)`": device_scope,
        "piece: `current_stream(device)`": lambda: current_stream(device),
    }
    print(f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.calls} calls each, "
          "(1, 1, 1024, 128) bf16\n")
    print("| entry point | host µs per call |\n|---|---:|")
    with torch.no_grad():
        for label, fn in {**rows, **pieces}.items():
            print(f"| {label} | {per_call_us(fn, args.calls):.1f} |", flush=True)
        print(profile_top(rows["sparge_attention (public API)"], args.calls), file=sys.stderr)


if __name__ == "__main__":
    main()
