"""Benchmark: block-sparse attention forward+backward on one GPU, against dense SDPA and FlexAttention.

Shapes (1,12,32760,128) and (1,40,75600,128), bf16, HND. Rows per shape, all timed as one forward plus
`torch.autograd.grad` of (q, k, v) for a random dout (CUDA events, median of repeats):
  dense SDPA (cuDNN), dense SDPA (flash)                      fwd+bwd
  FlexAttention with the identical block mask (per density)    fwd+bwd (torch.compile'd flex_attention)
  sparge block_sparse_attention (per density)                  fwd+bwd through the op's autograd
  sparge backward alone (cuda_backward.backward), default and deterministic
Densities 1.0 / 0.2 / 0.1 / 0.05 are random block masks (query blocks of 128, key blocks of 64). Columns: ms,
useful TFLOP/s (3.5 × 4·B·H·Lq·Lk·D × kept fraction for fwd+bwd, 2.5 × ... for bwd alone), speedup vs dense cuDNN
fwd+bwd. If this build has no CUDA forward, the sparge fwd+bwd rows use the reference forward and are marked.

    python tools/bench_attention_backward.py [--shapes 1.3b,14b] [--iters 10] [--out tools/results/x.md]
"""

from __future__ import annotations

import argparse
import datetime
import statistics

import torch
import torch.nn.functional as F

SHAPES = {"1.3b": (1, 12, 32760, 128), "14b": (1, 40, 75600, 128)}
DENSITIES = (1.0, 0.2, 0.1, 0.05)
BLOCK_Q, BLOCK_K = 128, 64


def time_ms(fn, iters: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean time of `iters` back-to-back calls (CUDA events)."""
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


def random_mask(b, h, lq, lk, density, seed=0):
    from sparge_kernels.block_mask import BlockMask
    from sparge_kernels.validation import num_blocks

    g = torch.Generator(device="cuda").manual_seed(seed)
    nq, nk = num_blocks(lq, BLOCK_Q), num_blocks(lk, BLOCK_K)
    dense = torch.rand(b, h, nq, nk, generator=g, device="cuda") < density
    return BlockMask.from_dense(dense, block_q=BLOCK_Q, block_k=BLOCK_K, seq_len_q=lq, seq_len_k=lk)


def flex_block_mask(mask):
    """The same kept blocks as a FlexAttention BlockMask (all kept blocks are full blocks: no mask_mod work)."""
    from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

    index = mask.kv_index.clamp_min(0)
    empty = torch.zeros_like(mask.kv_count)
    return FlexBlockMask.from_kv_blocks(
        empty, index, mask.kv_count, index, BLOCK_SIZE=(BLOCK_Q, BLOCK_K),
        seq_lengths=(mask.seq_len_q, mask.seq_len_k),
    )


def fwd_bwd(attend, q, k, v, dout):
    def run():
        out = attend(q, k, v)
        return torch.autograd.grad(out, (q, k, v), dout)

    return run


def bench_shape(name: str, iters: int, with_flex: bool = True, with_flash: bool = True) -> list[str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    import sparge_kernels as sk
    from sparge_kernels import _C, cuda_backward, reference  # type: ignore[attr-defined]

    b, h, length, d = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(b, h, length, d, generator=g, device="cuda").to(torch.bfloat16) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_()
    dense_fwd_flops = 4.0 * b * h * length * length * d
    scale = d**-0.5
    dense_iters = max(2, iters // 4) if length > 50000 else iters

    def sdpa(backend):
        def attend(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return attend

    rows: list[tuple[str, float, float]] = []  # (label, ms, useful flops)
    t_cudnn = time_ms(fwd_bwd(sdpa(SDPBackend.CUDNN_ATTENTION), q, k, v, dout), dense_iters, 3)
    rows.append(("dense SDPA cuDNN fwd+bwd", t_cudnn, 3.5 * dense_fwd_flops))
    if with_flash:
        t_flash = time_ms(fwd_bwd(sdpa(SDPBackend.FLASH_ATTENTION), q, k, v, dout), dense_iters, 3)
        rows.append(("dense SDPA flash fwd+bwd", t_flash, 3.5 * dense_fwd_flops))

    has_forward = hasattr(_C, "attention_forward")
    flex = torch.compile(flex_attention, dynamic=False)
    for density in DENSITIES:
        mask = random_mask(b, h, length, length, density)
        kept = float(mask.density)
        flops = 3.5 * dense_fwd_flops * kept
        label = f"{density:g} (kept {kept:.3f})"

        if with_flex:
            fbm = flex_block_mask(mask)
            t_flex = time_ms(
                fwd_bwd(lambda q, k, v, fbm=fbm: flex(q, k, v, block_mask=fbm, scale=scale), q, k, v, dout), iters, 3
            )
            rows.append((f"FlexAttention fwd+bwd, density {label}", t_flex, flops))

        if has_forward:
            t_sparge = time_ms(fwd_bwd(lambda q, k, v, m=mask: sk.block_sparse_attention(q, k, v, m, scale=scale),
                                       q, k, v, dout), iters)
            rows.append((f"**sparge fwd+bwd, density {label}**", t_sparge, flops))

        with torch.no_grad():
            if has_forward:
                from sparge_kernels import cuda_forward

                out, lse = cuda_forward.forward(q, k, v, mask.kv_count, mask.kv_index, BLOCK_Q, BLOCK_K, scale)
            else:
                out, lse = reference.attention_forward(q, k, v, mask.kv_count, mask.kv_index, BLOCK_Q, BLOCK_K, scale)
        idx = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, BLOCK_Q, BLOCK_K, scale)
        for det in (False, True):
            def bwd(det=det, out=out, lse=lse, idx=idx):
                return cuda_backward.backward(dout, q, k, v, out, lse, None, *idx, det)

            t_bwd = time_ms(bwd, iters)
            what = "deterministic" if det else "atomic dQ"
            rows.append((f"sparge backward only ({what}), density {label}", t_bwd, 2.5 / 3.5 * flops))
        if not has_forward:
            rows.append((f"(sparge fwd+bwd not measured: no CUDA forward in this build), density {label}", 0.0, 0.0))
        torch.cuda.empty_cache()

    lines = [
        f"### {name}: ({b}, {h}, {length}, {d}) bf16 HND, block_q={BLOCK_Q}, block_k={BLOCK_K}, random block masks",
        "",
        "| what | ms | useful TFLOP/s | speedup vs dense cuDNN fwd+bwd |",
        "| --- | --- | --- | --- |",
    ]
    for label, ms, flops in rows:
        if ms == 0.0:
            lines.append(f"| {label} | - | - | - |")
            continue
        lines.append(f"| {label} | {ms:.3f} | {flops / (ms * 1e-3) / 1e12:.0f} | {t_cudnn / ms:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1.3b,14b")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes a while)")
    parser.add_argument("--no-flash", action="store_true", help="skip dense SDPA flash")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    header = [
        "## block-sparse attention forward+backward",
        "",
        f"{props.name}, torch {torch.__version__}, {datetime.date.today().isoformat()}",
        "",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)
    for name in args.shapes.split(","):
        table = bench_shape(name.strip(), args.iters, not args.no_flex, not args.no_flash) + [""]
        print("\n".join(table), flush=True)
        lines += table
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
