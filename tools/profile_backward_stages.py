"""Where the Hopper backward's time goes (issue 13): times variants of the dK/dV kernel that skip one stage each.

Needs a profiling build of sparge-kernels: the CMake option SPARGE_PROFILE_STAGES=ON (default OFF; the environment
variable of the same name works too, pyproject.toml) compiles one extra dK/dV kernel per variant (D=128 bf16;
csrc/profile/, the bits in csrc/backward/stage_skip_bwd_sm90.h) and binds `_C.attention_backward_stage_profile`
and `_C.stage_profile_variants`. This tool builds nothing; without them it stops and says how to build.

Per density (default 0.05 and 1.0) on (1, 12, 32760, 128) bf16 HND with a random 128x64-block mask
(tools/bench_attention.py's random_mask) it runs the forward once for out and lse, checks that the "full" variant
(no stage skipped) gives production's dq/dk/dv (path='sm90'), then times every variant: one `_C` call =
preprocess + dK/dV kernel + dQ conversion, on preallocated buffers (no allocation or dq_accum zeroing in the timed
region; the atomics keep adding into dq_accum, which changes no timing), median of at least --runs (>= 20)
timings after a warm-up (bench_attention.time_ms, as the benchmark's rows). Rows:

  production    _C.attention_backward(path='sm90', dq_bulk_reduce=False): the shipped kernel in its atomic dQ
                mode (dq_accumulate="atomic"), which "full" instantiates for profiling (should equal it)
  full          the profiling instantiation with no stage skipped
  no_dq_atomics dQ = dS·K GEMM kept, its red.global.add.v2.f32 atomics into dq_accum skipped
  no_dq         no dQ GEMM and no atomics          (no_dq_atomics − no_dq ≈ the dQ GEMM)
  no_softmax    no exp2 / tail mask / dS = P∘(dP − delta) (raw S, dP converted and used as P, dS)
  no_pds_store  no stmatrix of P, dS into smem (the two named barriers stay)
  no_dkv_gemm   no dV += Pᵀ·dO, dK += dSᵀ·Q wgmmas
  no_dkv_store  no dK/dV epilogue stores
  gemms_only    no softmax, no P/dS stores, no dQ atomics: the five GEMMs, the ring and the barriers
  loads_only    the producer's TMA loads and the ring handshakes only (no wgmma, no math)
  bulk_dq       skips nothing: dQ by per-warp bulk async reduce-adds (cp.reduce.async.bulk .add.f32) from smem
                staging instead of atomics, plus the fragment-order convert (dq_accumulate="bulk" in production);
                full − bulk_dq is what the bulk mode saves
  side_kernels_only  preprocess + dQ conversion, the dK/dV kernel not launched

Columns: ms; saved = full − variant (what skipping the stage saves; stages overlap, so the savings do not add
up); share of full = saved / full; share of the dK/dV kernel = saved / (full − side_kernels_only).

Device commands (H200 session; the run tool with carry=[".carry"], results under $OUT), build + run in one command
(the build is 90a, D=128, bf16 only: 21 sources, a few minutes on 16 cores; the timing about a minute):

    export SPARGE_PROFILE_STAGES=ON SPARGE_HEAD_DIMS=128 SPARGE_DTYPES=bf16 && source tools/device/setup.sh && \
      python3 tools/profile_backward_stages.py --out $OUT/profile_backward_stages_h200.md

setup.sh's `pip install ./packages/sparge-kernels` reads SPARGE_PROFILE_STAGES (and the other two) from the
environment through pyproject.toml's cmake.define table; setup.sh already sets SPARGE_CUDA_ARCHS=90a. By hand:
`python3 -m pip install --no-build-isolation --no-deps ./packages/sparge-kernels
-C cmake.define.SPARGE_PROFILE_STAGES=ON -C cmake.define.SPARGE_CUDA_ARCHS=90a
-C cmake.define.CUTLASS_INCLUDE_DIR=/tmp/cutlass/include`. Options: --densities 0.05,1 --runs 30
--variants full,no_dq,... --shape 1,12,32760,128.

Caveat when reading the table: a variant that skips writing an operand (no_pds_store: dV/dK read stale sP/sdS;
no_softmax: raw S/dP as P/dS) feeds the tensor cores different bits, which can change power draw and so clocks.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BUILD_HINT = (
    "build sparge-kernels with the CMake option SPARGE_PROFILE_STAGES=ON (and 90a in SPARGE_CUDA_ARCHS), e.g. "
    "`export SPARGE_PROFILE_STAGES=ON SPARGE_HEAD_DIMS=128 SPARGE_DTYPES=bf16 && source tools/device/setup.sh` or "
    "`pip install ./packages/sparge-kernels -C cmake.define.SPARGE_PROFILE_STAGES=ON ...`"
)

WHAT = {
    "production": "shipped kernel, atomic dQ: _C.attention_backward(path='sm90', dq_bulk_reduce=False)",
    "full": "nothing skipped (profiling instantiation)",
    "no_dq_atomics": "dQ atomics (dS·K GEMM kept)",
    "no_dq": "dQ GEMM + atomics",
    "no_softmax": "exp2, tail mask, dS = P∘(dP − delta)",
    "no_pds_store": "P/dS stmatrix to smem (barriers kept)",
    "no_dkv_gemm": "dV, dK wgmmas",
    "no_dkv_store": "dK/dV epilogue stores",
    "gemms_only": "softmax + P/dS stores + dQ atomics",
    "loads_only": "all consumer work (TMA loads + handshakes left)",
    "bulk_dq": "nothing: dQ atomics replaced by bulk reduce-adds",
    "side_kernels_only": "the dK/dV kernel (preprocess + dQ convert left)",
}


def profiling_extension():
    """sparge_kernels._C of a SPARGE_PROFILE_STAGES=ON build, or SystemExit saying how to get one."""
    from sparge_kernels import cuda

    if cuda._C is None:
        raise SystemExit(f"sparge_kernels._C is not built ({cuda.MISSING_REASON}); {BUILD_HINT}")
    if not hasattr(cuda._C, "attention_backward_stage_profile"):
        raise SystemExit(
            "this sparge_kernels._C has no attention_backward_stage_profile: it was built without the CMake option "
            f"SPARGE_PROFILE_STAGES=ON; {BUILD_HINT}"
        )
    return cuda._C


def profile_density(c, shape, density: float, names: list[str], runs: int, seed: int = 0) -> tuple[str, str]:
    """(markdown table, sanity line) for one mask density."""
    from bench_attention import BLOCK_K, BLOCK_Q, random_mask, time_ms

    import sparge_kernels as sk
    from sparge_kernels.cuda import current_stream, empty_like_layout, kernel_ready
    from sparge_kernels.validation import num_blocks

    b, h, length, d = shape
    scale = d**-0.5
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    q, k, v, dout = (torch.randn(b, h, length, d, generator=g, device="cuda").to(torch.bfloat16) for _ in range(4))
    mask = random_mask(b, h, length, length, density, seed=seed)
    with torch.no_grad():
        out, lse = sk.block_sparse_attention(q, k, v, mask, scale=scale, return_lse=True)
    q, k, v, out, dout = (kernel_ready(t) for t in (q, k, v, out, dout))
    lse = lse.to(torch.float32).contiguous()
    idx = dict(kv_count=mask.kv_count.contiguous(), kv_index=mask.kv_index.contiguous(),
               q_count=mask.q_count.contiguous(), q_index=mask.q_index.contiguous())
    padded = num_blocks(length, BLOCK_Q) * BLOCK_Q
    f32 = dict(dtype=torch.float32, device=q.device)
    work = dict(lse_log2=torch.empty(b, h, padded, **f32), delta=torch.empty(b, h, padded, **f32),
                dq_accum=torch.zeros(b, h, padded, d, **f32))
    grads = dict(dq=empty_like_layout(q), dk=empty_like_layout(k), dv=empty_like_layout(v))
    args = dict(q=q, k=k, v=v, out=out, dout=dout, lse=lse, dlse=None, **idx, **grads, **work, block_q=BLOCK_Q,
                block_k=BLOCK_K, scale=float(scale), stream=current_stream(q.device))
    variants = c.stage_profile_variants

    def run(name: str) -> None:
        with torch.cuda.device(q.device):
            if name == "production":
                c.attention_backward(**args, deterministic=False, dq_bulk_reduce=False, path="sm90")
            else:
                c.attention_backward_stage_profile(**args, skip_stages=int(variants[name]))

    # Sanity: the unskipped profiling variants (full; bulk_dq, which skips nothing either) compute what production
    # computes (dQ differs by summation order).
    results = {}
    checked = ["production", "full"] + (["bulk_dq"] if "bulk_dq" in names else [])
    for name in checked:
        work["dq_accum"].zero_()
        run(name)
        torch.cuda.synchronize()
        results[name] = [grads[t].float().clone() for t in ("dq", "dk", "dv")]
    sanities = []
    for name in checked[1:]:
        rel = max(((a - p).abs().max() / p.abs().max().clamp_min(1e-30)).item()
                  for a, p in zip(results[name], results["production"]))
        sanities.append(f"{name} vs production dq/dk/dv: max relative difference {rel:.1e}"
                        + ("" if rel < 1e-2 else " (MISMATCH)"))
    del results
    sanity = "; ".join(sanities)
    print(f"density {density:g}: {sanity}", flush=True)

    times = {}
    for name in names + ["full (again)"]:  # full again at the end: the drift of the clocks over the run
        kernel_name = name.split(" ")[0]
        times[name] = time_ms(lambda n=kernel_name: run(n), min_runs=runs)
        print(f"  density {density:g} {name}: {times[name]:.3f} ms", flush=True)  # a hang names its variant
    full, side = times["full"], times.get("side_kernels_only")
    kernel = full - side if side is not None else None
    lines = [f"#### density {density:g} (kept {mask.density:.3f}), ({b}, {h}, {length}, {d}) bf16", "",
             "| variant | skips | ms | saved vs full (ms) | share of full | share of dK/dV kernel |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, ms in times.items():
        saved = full - ms
        share_kernel = f"{saved / kernel:.1%}" if kernel and kernel > 0 else "-"
        what = WHAT.get(name.split(" ")[0], "")
        lines.append(f"| {name} | {what} | {ms:.3f} | {saved:+.3f} | {saved / full:.1%} | {share_kernel} |")
    if kernel is not None:
        lines += ["", f"dK/dV kernel alone ≈ full − side_kernels_only = {kernel:.3f} ms."]
    return "\n".join(lines), sanity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1,12,32760,128", help="B,H,L,D (D must be 128)")
    parser.add_argument("--densities", default="0.05,1", help="comma-separated block densities")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant (>= 20)")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: every variant built)")
    parser.add_argument("--out", default="", help="also write the markdown here")
    a = parser.parse_args()
    if a.runs < 20:
        parser.error("--runs must be >= 20")
    c = profiling_extension()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        raise SystemExit("the profiling variants are Hopper kernels: needs an sm_90 GPU")
    shape = tuple(int(x) for x in a.shape.split(","))
    built = list(c.stage_profile_variants)
    names = [n.strip() for n in a.variants.split(",") if n.strip()] or built
    unknown = [n for n in names if n not in built and n != "production"]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; this build has {built}")
    names = ["production"] + [n for n in ["full"] + names if n != "production"]
    names = list(dict.fromkeys(names))  # production, full, then the rest in order, once each

    header = [f"### Hopper backward stage costs ({datetime.date.today()}, {torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}, sparge_kernels._C built with CUDA {c.build_cuda_version})", "",
              "One `_C` call each (preprocess + dK/dV kernel + dQ conversion), median of "
              f"{a.runs} CUDA-event timings after warm-up; saved = full − variant.", ""]
    blocks = []
    for density in (float(x) for x in a.densities.split(",")):
        table, sanity = profile_density(c, shape, density, names, a.runs)
        print(table + "\n", flush=True)
        blocks += [table, "", sanity, ""]
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(header + blocks))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
