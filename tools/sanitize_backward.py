"""Tiny backward cases for compute-sanitizer (memcheck/racecheck): tails on both sides, Lq != Lk, an empty query
block, a key block nobody keeps, HND and NHD strides, every backward kernel (SM80 with bulk or atomic dQ, SM80
deterministic, the Hopper backward with bulk or atomic dQ or dS spilled (all tiles, or half with the rest bulk) where
this build and GPU have it, its deterministic pair (Hopper dK/dV without dQ, then the SM80 dQ kernel) and
deterministic spill (half the tiles: both dQ kernels), spill one head at a time, and with its persistent schedule:
sm90-persistent, which adds a case with more key blocks than SMs so that CTAs take several in turn).

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tools/sanitize_backward.py \
        [--paths sm80 sm90 sm90-persistent]
"""

from __future__ import annotations

import argparse

import torch

from sparge_kernels import KernelOptions, cuda_backward, reference
from sparge_kernels.backend import MaskArgs
from sparge_kernels.block_mask import BlockMask

# (backward_path, dq_accumulate, deterministic, backward_schedule); "spill-half": the dS spill mode with a buffer
# for about half of the mask's tiles (key blocks past it take the bulk path); "spill-groups": the same buffer, one
# head at a time (ds_spill_head_groups=2: strided views of one head each, the buffer reused).
MODES = {"sm80": [("sm80", "bulk", False, "tile"), ("sm80", "atomic", False, "tile"), ("sm80", "bulk", True, "tile")],
         "sm90": [("sm90", "bulk", False, "tile"), ("sm90", "atomic", False, "tile"), ("sm90", "bulk", True, "tile"),
                  ("sm90", "spill", False, "tile"), ("sm90", "spill-half", False, "tile"),
                  ("sm90", "spill-half", True, "tile"), ("sm90", "spill-groups", False, "tile")],
         "sm90-persistent": [("sm90", "bulk", False, "persistent"), ("sm90", "atomic", False, "persistent"),
                             ("sm90", "spill", False, "persistent"), ("sm90", "spill-half", False, "persistent"),
                             ("sm90", "spill-half", True, "persistent"), ("sm90", "spill-groups", True, "persistent")]}


def operand(n: int, d: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """(1, 2, n, d) random values; for NHD a transposed view of a (1, n, 2, d) tensor."""
    if layout == "NHD":
        return torch.randn(1, n, 2, d, device="cuda", dtype=dtype).transpose(1, 2)
    return torch.randn(1, 2, n, d, device="cuda", dtype=dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", nargs="+", choices=sorted(MODES), default=["sm80"])
    args = p.parse_args()
    torch.manual_seed(0)
    # tails: 300 = 2*128 + 44 queries, 200 = 3*64 + 8 keys (9608 = 150*64 + 8: 302 key blocks over 2 heads)
    cases = [(torch.bfloat16, 128, "NHD", 200), (torch.float16, 64, "HND", 200), (torch.bfloat16, 64, "NHD", 200),
             (torch.float16, 128, "HND", 200)]
    if "sm90-persistent" in args.paths:
        cases.append((torch.bfloat16, 128, "HND", 9608))
    for dtype, d, layout, lk in cases:
        q, k, v, dout = (operand(n, d, dtype, layout) for n in (300, lk, lk, 300))
        nk = (lk + 63) // 64
        dense = torch.rand(1, 2, 3, nk, device="cuda") < 0.6
        dense[0, 0, 1] = False  # an empty query block: zero dq
        dense[0, 1, :, 2] = False  # a key block nobody keeps: zero dk, dv
        dense[0, 1, 2, nk - 1] = True  # the two tail blocks meet
        mask = BlockMask.from_dense(dense, seq_len_q=300, seq_len_k=lk)
        out, lse = reference.attention_forward(q, k, v, mask.kv_count, mask.kv_index, 128, 64, d**-0.5)
        mask_args = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, d**-0.5)
        for path in args.paths:
            for backward_path, accumulate, det, schedule in MODES[path]:
                spill = {"ds_spill_bytes": int(mask.q_count.sum()) // 2 * 128 * 64 * q.element_size()} if (
                    accumulate in ("spill-half", "spill-groups")) else {}
                if accumulate == "spill-groups":
                    spill["ds_spill_head_groups"] = 2
                options = KernelOptions(backward_path=backward_path, dq_accumulate=accumulate.partition("-")[0],
                                        backward_schedule=schedule, debug_fill=float("nan"), **spill)
                grads = cuda_backward.backward(dout, q, k, v, out, lse, torch.randn_like(lse),
                                               MaskArgs(*mask_args, deterministic=det), options=options)
                torch.cuda.synchronize()
                assert all(torch.isfinite(g).all() for g in grads), (dtype, d, layout, backward_path, det)
        print(dtype, d, layout, lk, "ok")
    print("sanitizer cases done")


if __name__ == "__main__":
    main()
