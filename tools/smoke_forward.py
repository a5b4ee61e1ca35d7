"""Quick check of one forward kernel path on the GPU (used by gpu_kernels.sh before the long steps).

    python tools/smoke_forward.py sm90 [--edge-cases]

--edge-cases adds small masks that exercise the ends of the mainloop's block pipeline (for compute-sanitizer runs):
one kept block per query block (the Lk tail block alone, kv_count 1), two kept blocks, three (the Hopper kernel's
last stage then holds the tail block and a masked repeat), full rows next to empty rows, and a dense mask, each
with Lq and Lk tails.
"""

from __future__ import annotations

import argparse

import torch

import sparge_kernels as sk
from sparge_kernels import reference
from sparge_kernels.block_mask import BlockMask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default="auto")
    parser.add_argument("--edge-cases", action="store_true", help="also run the small pipeline-edge masks")
    args = parser.parse_args()
    with sk.kernel_options(forward_path=args.path):
        check_path(args.path)
        if args.edge_cases:
            check_edge_cases(args.path)


def check(path: str, what: str, q, k, v, dense) -> None:
    lq, lk = q.shape[2], k.shape[2]
    mask = BlockMask.from_dense(dense, seq_len_q=lq, seq_len_k=lk)
    out, lse = sk.block_sparse_attention(q, k, v, mask, return_lse=True)
    torch.cuda.synchronize()
    d = q.shape[-1]
    ref, ref_lse = reference.attention_forward(q.double(), k.double(), v.double(), mask.kv_count, mask.kv_index,
                                               128, 64, d**-0.5)
    err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    empty = torch.isinf(ref_lse)
    empty_ok = bool((out.double()[empty] == 0).all()) and bool(torch.isneginf(lse[empty]).all())
    print(f"{path} {what} d={d} {q.dtype}: rel err {err:.2e}, finite {bool(torch.isfinite(out).all())}, "
          f"empty rows ok {empty_ok}", flush=True)
    assert err < 1e-2 and torch.isfinite(out).all() and empty_ok, (what, err)


def check_path(path: str) -> None:
    for d, dtype in ((128, torch.bfloat16), (64, torch.float16)):
        q, k, v = (torch.randn(1, 2, n, d, device="cuda", dtype=dtype) for n in (300, 1000, 1000))
        dense = torch.rand(1, 2, 3, 16, device="cuda") < 0.5
        dense[0, 1, 2] = False
        check(path, "random", q, k, v, dense)


def check_edge_cases(path: str) -> None:
    for d, dtype in ((128, torch.bfloat16), (64, torch.float16)):
        lq, lk = 300, 1000  # 3 query blocks (the last 44 rows), 16 key blocks (the last 40 keys)
        q, k, v = (torch.randn(1, 2, n, d, device="cuda", dtype=dtype) for n in (lq, lk, lk))
        nq, nk = 3, 16
        tail_only = torch.zeros(1, 2, nq, nk, dtype=torch.bool, device="cuda")
        tail_only[..., nk - 1] = True
        check(path, "kv_count 1 (the tail block)", q, k, v, tail_only)
        two = torch.zeros_like(tail_only)
        two[..., 0] = True
        two[..., nk - 1] = True
        check(path, "kv_count 2", q, k, v, two)
        three = two.clone()
        three[..., 5] = True
        check(path, "kv_count 3 (the tail block alone in the last stage)", q, k, v, three)
        mixed = torch.ones_like(tail_only)
        mixed[0, 0, 1] = False
        mixed[0, 1, 0] = False
        mixed[0, 1, 2] = False
        check(path, "full rows next to empty rows", q, k, v, mixed)
        check(path, "dense", q, k, v, torch.ones_like(tail_only))


if __name__ == "__main__":
    main()
