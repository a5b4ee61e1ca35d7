"""Demo: SpargeAttention2 on a Wan2.1-shaped input (12 heads, head dim 128, video token grid).

On a CPU this runs the PyTorch reference at reduced length; on a GPU with the compiled kernels it runs
them at full 480p length. Prints density, error against dense attention and times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from structured_inputs import video_qkv  # noqa: E402

import sparge_kernels as sk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=None, help="latent frames (21 = 81 video frames)")
    parser.add_argument("--height", type=int, default=30, help="latent patch rows (480p: 30)")
    parser.add_argument("--width", type=int, default=52, help="latent patch columns (832 px: 52)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--topk", type=float, default=0.03)
    parser.add_argument("--topp", type=float, default=0.2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    frames = args.frames or (21 if on_gpu else 3)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    grid = (frames, args.height, args.width)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = video_qkv(1, args.heads, grid, 128, dtype=dtype, device=device, generator=gen)
    length = q.shape[2]
    print(f"sparge-kernels {sk.__version__} on {device} ({'CUDA kernels' if on_gpu else 'PyTorch reference'}); "
          f"q/k/v (1, {args.heads}, {length}, 128) {dtype}, token grid {grid}")

    def timed(fn):
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if on_gpu:
            torch.cuda.synchronize()
        return result, (time.perf_counter() - start) * 1e3

    (out, mask), sparse_ms = timed(lambda: sk.sparge_attention(q, k, v, topk=args.topk, topp=args.topp,
                                                              return_mask=True))
    dense, dense_ms = timed(lambda: F.scaled_dot_product_attention(q, k, v))
    full_mask = sk.predict_block_mask(q, k, topk=1.0, topp=0.0)
    all_kept = sk.block_sparse_attention(q, k, v, full_mask)
    rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm())  # noqa: E731
    print(f"topk={args.topk} topp={args.topp}: density {mask.density:.4f} (sparsity {mask.sparsity:.1%}), "
          f"kept key blocks per query block {mask.kv_count.float().mean():.1f} of {mask.num_k_blocks}")
    print(f"relative L2 error vs dense attention: sparse {rel(out, dense):.3e}, "
          f"all blocks kept {rel(all_kept, dense):.3e}")
    print(f"time: sparge_attention {sparse_ms:.1f} ms, dense SDPA {dense_ms:.1f} ms")


if __name__ == "__main__":
    main()
