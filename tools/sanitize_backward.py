"""Tiny backward cases for compute-sanitizer (memcheck/racecheck): tails, empty rows, NHD strides, every mode.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tools/sanitize_backward.py
"""

from __future__ import annotations

import torch

from sparge_kernels import KernelOptions, cuda_backward, reference
from sparge_kernels.block_mask import BlockMask


def main() -> None:
    for dtype, d in ((torch.bfloat16, 128), (torch.float16, 64)):
        q = torch.randn(1, 300, 2, d, device="cuda", dtype=dtype).transpose(1, 2)
        k = torch.randn(1, 200, 2, d, device="cuda", dtype=dtype).transpose(1, 2)
        v = torch.randn(1, 2, 200, d, device="cuda", dtype=dtype)
        dout = torch.randn(1, 2, 300, d, device="cuda", dtype=dtype)
        dense = torch.rand(1, 2, 3, 4, device="cuda") < 0.6
        dense[0, 0, 1] = False  # an empty query block
        dense[0, 1, :, 2] = False  # a key block nobody keeps
        mask = BlockMask.from_dense(dense, seq_len_q=300, seq_len_k=200)
        out, lse = reference.attention_forward(q, k, v, mask.kv_count, mask.kv_index, 128, 64, d**-0.5)
        args = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, d**-0.5)
        for accumulate, det in (("bulk", False), ("atomic", False), ("bulk", True)):
            grads = cuda_backward.backward(dout, q, k, v, out, lse, torch.randn_like(lse), *args, det,
                                           options=KernelOptions(dq_accumulate=accumulate))
            torch.cuda.synchronize()
            assert all(torch.isfinite(g).all() for g in grads)
    print("sanitizer cases done")


if __name__ == "__main__":
    main()
