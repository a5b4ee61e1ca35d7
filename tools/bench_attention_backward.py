"""Quick forward+backward benchmark: only the fwd+bwd rows of bench_attention.py (`fwd_bwd_rows`), on one GPU.

Same shapes, random masks (densities 1.0 / 0.2 / 0.1 / 0.05) and timing as `bench_attention.py --backward`, without
its forward rows; the first row is dense SDPA cuDNN fwd+bwd, so the speedup column is against it. Rows: dense SDPA
(cuDNN, flash) fwd+bwd, FlexAttention fwd+bwd with the identical block mask, sparge fwd+bwd through the op's
autograd (both Hopper schedules, SM80), sparge's backward alone in each dQ mode and schedule, and the predicted-mask
rows (Flex and sparge_attention fwd+bwd on video-like inputs).

    python tools/bench_attention_backward.py [--shapes 1.3b,14b] [--densities 1,0.05] [--no-flex] [--no-flash]
                                             [--out tools/results/x.md]

For the 14B rows, `--shapes 14b --densities 0.05 --no-flash` skips the forward rows. On 2026-12-04 the full
`bench_attention.py --backward --shapes 14b` was still in its forward rows after 320 s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_attention as ba  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1.3b,14b")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile takes a while)")
    parser.add_argument("--no-flash", action="store_true", help="skip dense SDPA flash")
    parser.add_argument("--densities", default=",".join(f"{x:g}" for x in ba.DENSITIES),
                        help=f"random-mask densities, a subset of {ba.DENSITIES} (default: all)")
    args = parser.parse_args()
    densities = tuple(float(x) for x in args.densities.split(",") if x)
    if not densities or any(x not in ba.DENSITIES for x in densities):
        raise SystemExit(f"--densities: {args.densities!r} is not a subset of {ba.DENSITIES}")
    props = torch.cuda.get_device_properties(0)
    parts = [f"## sparge attention forward+backward benchmark\n\n{props.name}, torch {torch.__version__}, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Median ms; useful TFLOP/s counts "
             "only kept blocks (fwd+bwd: 3.5·4·B·H·Lq·Lk·D·density; backward alone: 2.5·...).\n"]
    print(parts[0], flush=True)
    for name in args.shapes.split(","):
        (b, h, length, d), _ = ba.SHAPES[name]
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, length, d, generator=g, device="cuda").to(torch.bfloat16) for _ in range(3))
        masks = {density: ba.random_mask(b, h, length, length, density) for density in densities}
        ctx = ba.ShapeContext(name, (b, h, length, d), q, k, v, masks, 4.0 * b * h * length * length * d,
                              ba.predicted_inputs(name), densities)
        parts.append(ba.table(name, ba.fwd_bwd_rows(ctx, with_flex=not args.no_flex, with_flash=not args.no_flash)))
        print(parts[-1], "\n", flush=True)
        del q, k, v, masks, ctx
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
