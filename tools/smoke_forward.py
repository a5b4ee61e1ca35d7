"""Quick check of one forward kernel path on the GPU (used by gpu_kernels.sh before the long steps).

    python tools/smoke_forward.py sm90
"""

from __future__ import annotations

import sys

import torch

import sparge_kernels as sk
from sparge_kernels import reference
from sparge_kernels.block_mask import BlockMask


def main(path: str) -> None:
    with sk.kernel_options(forward_path=path):
        check_path(path)


def check_path(path: str) -> None:
    for d, dtype in ((128, torch.bfloat16), (64, torch.float16)):
        q, k, v = (torch.randn(1, 2, n, d, device="cuda", dtype=dtype) for n in (300, 1000, 1000))
        dense = torch.rand(1, 2, 3, 16, device="cuda") < 0.5
        dense[0, 1, 2] = False
        mask = BlockMask.from_dense(dense, seq_len_q=300, seq_len_k=1000)
        out, lse = sk.block_sparse_attention(q, k, v, mask, return_lse=True)
        torch.cuda.synchronize()
        ref, ref_lse = reference.attention_forward(q.double(), k.double(), v.double(), mask.kv_count,
                                                   mask.kv_index, 128, 64, d**-0.5)
        err = ((out.double() - ref).norm() / ref.norm()).item()
        print(f"{path} d={d} {dtype}: rel err {err:.2e}, finite {bool(torch.isfinite(out).all())}", flush=True)
        assert err < 1e-2, err


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "auto")
