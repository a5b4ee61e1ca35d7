"""A/B timing of the Hopper kernels between two builds (run once per build, same GPU, same inputs).

Times, per shape and random-mask density, `cuda_backward.backward` alone (sm90) for each schedule and dQ mode
(--dq-modes: KernelOptions.dq_accumulate values, default bulk), the forward, and the fwd+bwd of
`block_sparse_attention` per dQ mode (default options otherwise), with bench_attention.py's inputs, masks and
timer, and prints one markdown row per measurement, labelled with --label (e.g. the build's git revision):

    python3 tools/device/bwd_ab.py --label new [--shapes 1.3b] [--densities 0.05,0.2,1] [--deterministic]
                                   [--dq-modes bulk,spill] [--spill-gib 24,2x12] [--fwd-bwd-spill] [--flex]
                                   [--profile]

tools/device/bwd_persistent_h200.sh (steps base-build, ab) runs it against a base build installed under another
PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_attention as ba  # noqa: E402


def time_density(label: str, name: str, tensors, density: float, schedules: list[str], profile: bool,
                 deterministic: bool, dq_modes: list[str], spill_budgets: list[tuple[int, int]],
                 fwd_bwd_spill: bool = False, flex: bool = False) -> None:
    import sparge_kernels as sk
    from sparge_kernels import cuda_backward
    from sparge_kernels.backend import MaskArgs

    q, k, v, dout = tensors
    b, h, length, d = q.shape
    scale = d**-0.5
    dense_flops = 4.0 * b * h * length * length * d
    mask = ba.random_mask(b, h, length, length, density)
    with torch.no_grad():
        out, lse = sk.block_sparse_attention(q, k, v, mask, scale=scale, return_lse=True)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, ba.BLOCK_Q, ba.BLOCK_K, scale)

    def row(what: str, ms: float, flops: float) -> None:
        print(f"| {label} | {name} | {mask.density:.3f} | {what} | {ms:.3f} | {flops / ms * 1e-9:.0f} |", flush=True)

    # (what, options, mask args): the Hopper backward per schedule; with --deterministic also the SM80 dK/dV + dQ
    # kernels against the Hopper dK/dV kernel + the SM80 dQ kernel.
    runs = [(f"backward alone, {schedule}" + (f", {mode} dQ" if dq_modes != ["bulk"] else ""),
             sk.KernelOptions(dq_accumulate=mode, backward_path="sm90", backward_schedule=schedule), m)
            for mode in dq_modes for schedule in schedules]
    # The spill mode with other buffer budgets and head groups (--spill-gib): where the default does not hold
    # every tile (1.3B above ~8%, 14B), how much of the bulk path's time a larger buffer, or the same buffer
    # reused group after group, takes away.
    head_tiles = int(mask.q_count.sum()) / h * ba.BLOCK_Q * ba.BLOCK_K * q.element_size()  # bytes, mean head
    runs += [(f"backward alone, {schedule}, spill dQ, {budget / 2**30:g} GiB budget, {groups} head group(s) "
              f"(tiles fit: ~{min(1.0, budget / (head_tiles * -(-h // groups))):.0%})",
              sk.KernelOptions(dq_accumulate="spill", backward_path="sm90", backward_schedule=schedule,
                               ds_spill_bytes=budget, ds_spill_head_groups=groups), m)
             for budget, groups in spill_budgets for schedule in schedules]
    if deterministic:
        runs += [(f"backward alone, deterministic, {path}", sk.KernelOptions(backward_path=path),
                  m._replace(deterministic=True)) for path in ("sm80", "sm90")]
        if "spill" in dq_modes:
            runs.append(("backward alone, deterministic, sm90 spill",
                         sk.KernelOptions(backward_path="sm90", dq_accumulate="spill"), m._replace(deterministic=True)))
    for what, options, args in runs:

        def bwd(options=options, args=args):
            return cuda_backward.backward(dout, q, k, v, out, lse, None, args, options=options)

        row(what, ba.time_ms(bwd), 2.5 * dense_flops * mask.density)
    with torch.no_grad():
        row("forward", ba.time_ms(lambda: sk.block_sparse_attention(q, k, v, mask, scale=scale)),
            dense_flops * mask.density)
    qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd_bwd():
        return torch.autograd.grad(sk.block_sparse_attention(qq, kk, vv, mask, scale=scale), (qq, kk, vv), dout)

    # fwd+bwd per dQ mode, and (--fwd-bwd-spill) with each spill budget / head grouping of --spill-gib
    scopes = [(f", {mode} dQ" if dq_modes != ["bulk"] else "", dict(dq_accumulate=mode)) for mode in dq_modes]
    if fwd_bwd_spill:
        scopes += [(f", spill dQ, {budget / 2**30:g} GiB, {groups} head group(s)",
                    dict(dq_accumulate="spill", ds_spill_bytes=budget, ds_spill_head_groups=groups))
                   for budget, groups in spill_budgets]
    for suffix, fields in scopes:
        with sk.kernel_options(**fields):
            row("fwd+bwd" + suffix, ba.time_ms(fwd_bwd), 3.5 * dense_flops * mask.density)
            # The same from a CUDA graph, GPU time only: where it is well below the eager row, that row counted
            # the host's gaps (Python, autograd) between the kernels.
            try:
                row(f"fwd+bwd, {ba.GRAPH_FWD_BWD} in one CUDA graph{suffix}", ba.fwd_bwd_graph_ms(fwd_bwd),
                    3.5 * dense_flops * mask.density)
            except Exception as exc:  # reported; the other rows still run
                print(f"fwd+bwd CUDA graph: capture failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                      flush=True)
    if flex and density < 1:  # the peer: FlexAttention on its native 128x128 blocks at the same density
        from torch.nn.attention.flex_attention import flex_attention

        native = ba.random_mask(b, h, length, length, density, block_k=128)
        fbm = ba.flex_block_mask(native)
        compiled = torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")

        def flex_fwd_bwd():
            return torch.autograd.grad(compiled(qq, kk, vv, block_mask=fbm, scale=scale), (qq, kk, vv), dout)

        what = f"FlexAttention fwd+bwd, 128x128 blocks (kept {native.density:.3f})"
        row(what, ba.time_ms(flex_fwd_bwd), 3.5 * dense_flops * native.density)
        row(f"{what}, {ba.GRAPH_FWD_BWD} in one CUDA graph", ba.fwd_bwd_graph_ms(flex_fwd_bwd),
            3.5 * dense_flops * native.density)
    if profile:  # where fwd+bwd spends what forward + backward alone do not (CUDA time per kernel, stderr)
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fwd_bwd()
            torch.cuda.synchronize()
        print(f"{label} {name} density {density:g}: 5 x fwd+bwd\n"
              + prof.key_averages().table(sort_by="cuda_time_total", row_limit=20), file=sys.stderr, flush=True)


def parse_spill_budget(text: str) -> tuple[int, int]:
    """"2" -> (2 GiB, 1 head group); "2x12" -> (2 GiB, 12 head groups)."""
    gib, _, groups = text.partition("x")
    return int(float(gib) * 2**30), int(groups or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True)
    parser.add_argument("--shapes", default="1.3b")
    parser.add_argument("--densities", default="0.05,0.2,1")
    parser.add_argument("--schedules", default="tile,persistent")
    parser.add_argument("--deterministic", action="store_true",
                        help="also time the deterministic backward on both paths")
    parser.add_argument("--dq-modes", default="bulk",
                        help="KernelOptions.dq_accumulate values to time the backward and fwd+bwd with")
    parser.add_argument("--spill-gib", default="",
                        help="comma-separated dS spill budgets in GiB (KernelOptions.ds_spill_bytes), each optionally "
                             "xGROUPS (KernelOptions.ds_spill_head_groups), e.g. 24,2x12: also time the spill "
                             "backward with them")
    parser.add_argument("--fwd-bwd-spill", action="store_true",
                        help="also time fwd+bwd with each --spill-gib budget / head grouping")
    parser.add_argument("--flex", action="store_true",
                        help="also time FlexAttention fwd+bwd on 128x128 blocks at each density below 1")
    parser.add_argument("--profile", action="store_true",
                        help="also print a torch.profiler table of 5 fwd+bwd per density to stderr")
    args = parser.parse_args()
    print("| build | shape | density | what | ms | useful TFLOP/s |\n|---|---|---:|---|---:|---:|", flush=True)
    for name in args.shapes.split(","):
        shape, _ = ba.SHAPES[name]
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(*shape, generator=g, device="cuda").to(torch.bfloat16) for _ in range(3))
        dout = torch.randn(shape, generator=torch.Generator(device="cuda").manual_seed(2), device="cuda")
        tensors = (q, k, v, dout.to(q.dtype))
        for density in (float(x) for x in args.densities.split(",")):
            time_density(args.label, name, tensors, density, args.schedules.split(","), args.profile,
                         args.deterministic, args.dq_modes.split(","),
                         [parse_spill_budget(x) for x in args.spill_gib.split(",") if x], args.fwd_bwd_spill,
                         args.flex)
        del q, k, v, dout, tensors
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
