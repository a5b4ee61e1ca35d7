"""A/B timing of the Hopper forward's tail split (KernelOptions.forward_tail_splits) in one build.

Per shape: the forward of `block_sparse_attention` on a random 5% mask and on a predicted 5% mask (topk=0.05,
topp=0: every row keeps the same number of key blocks, so all tiles cost the same and only the last round's fill
matters), and `sparge_attention` end to end on the predicted one (eager, and GPU time in a CUDA graph), each with
the split off (1) and automatic (0), interleaved twice against clock drift; dense cuDNN SDPA in the same run for
issue 14's "incl. mask vs cuDNN" ratio. bench_attention.py's inputs and timers. Prints a markdown table:

    python3 tools/device/fwd_split_ab.py [--shapes 1.3b,14b]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_attention as ba  # noqa: E402

SPLITS = (1, 0, 1, 0)  # off, automatic, twice


def time_shape(name: str) -> list[str]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import sparge_kernels as sk
    from sparge_kernels.cuda import _C

    q, k, v, _ = ba.predicted_inputs(name)
    b, h, length, d = q.shape
    scale = d**-0.5
    masks = {"random 5%": ba.random_mask(b, h, length, length, 0.05),
             "predicted 5% (topk=0.05, topp=0)": sk.predict_block_mask(q, k, topk=0.05, topp=0.0, scale=scale)}
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        cudnn = ba.time_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))
    tiles = b * h * masks["random 5%"].kv_count.shape[-1]
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    split_from, parts = _C.forward_tail_split(tiles, sms, 0)
    lines = [f"### {name} {tuple(q.shape)} bf16: {tiles} tiles over {sms} SMs; automatic split: tiles from "
             f"{split_from} on in {parts} parts; dense cuDNN forward {cudnn:.3f} ms", "",
             "| mask | what | split off, ms (2 runs) | automatic, ms (2 runs) | off / automatic | vs cuDNN (auto) |",
             "|---|---|---:|---:|---:|---:|"]
    for label, mask in masks.items():
        runs: dict[str, dict[int, list[float]]] = {}

        def record(what: str, splits: int, ms: float, runs=runs) -> None:
            runs.setdefault(what, {}).setdefault(splits, []).append(ms)

        for splits in SPLITS:
            with sk.kernel_options(forward_tail_splits=splits), torch.no_grad():
                record("forward", splits, ba.time_ms(lambda m=mask: sk.block_sparse_attention(q, k, v, m, scale=scale)))
                if label.startswith("predicted"):
                    total = (lambda: sk.sparge_attention(q, k, v, topk=0.05, topp=0.0, scale=scale))
                    record("sparge_attention incl. prediction", splits, ba.time_ms(total))
                    record(f"sparge_attention incl. prediction, {ba.GRAPH_CALLS} in one CUDA graph", splits,
                           ba.graph_ms(total, ba.GRAPH_CALLS))
        for what, by_split in runs.items():
            off, auto = by_split[1], by_split[0]
            ratio = statistics.median(off) / statistics.median(auto)
            lines.append(f"| {label} | {what} | {' / '.join(f'{t:.3f}' for t in off)} | "
                         f"{' / '.join(f'{t:.3f}' for t in auto)} | {ratio:.3f}x | "
                         f"{cudnn / statistics.median(auto):.2f}x |")
    torch.cuda.empty_cache()
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1.3b", help="comma-separated, of " + ", ".join(ba.SHAPES))
    args = parser.parse_args()
    print(f"Device: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    for name in args.shapes.split(","):
        print("\n".join(time_shape(name)), flush=True)


if __name__ == "__main__":
    main()
