"""Probe a trained world model (GPU or CPU): velocity loss per σ, attention concentration and the training-free
masks' recall, training-free sparse velocity error, and a grid of samples. Prints a markdown table; --out writes
probe.json and samples.png there.

    python tools/world/probe_teacher.py --model runs/world-teacher/export --out out/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import sparge_kernels as sk
from sparge_pipelines import apply_sparge, remove_sparge
from sparge_pipelines.attention_mass import AttentionMassProbe
from sparge_pipelines.world import SpargeWorld, WorldSize
from sparge_pipelines.world.model import load_world_transformer
from sparge_pipelines.world.sampler import SamplerConfig, sample_noise, sample_videos

MASKS = {"topk0.05": dict(topk=0.05, topp=0.0), "hybrid0.03/0.2": dict(topk=0.03, topp=0.2),
         "topp0.2": dict(topk=0.0, topp=0.2)}


def rel_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.float() - b.float()) ** 2).sum() / (b.float() ** 2).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on GPU, fp32 on CPU")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device == "cuda" else "fp32")]
    model = load_world_transformer(args.model, device=device, dtype=dtype)
    size = WorldSize(args.frames, args.size, args.size)
    world = SpargeWorld(size, split="heldout")
    idx = list(range(args.batch))
    x0 = world.videos(idx, device=device)
    text = world.text(idx, device=device, dtype=dtype)
    noise = sample_noise([10_000 + i for i in idx], size, device=device)
    report: dict = {"model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "size": [size.frames, size.height, size.width], "per_sigma": {}}

    def velocity(sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        x_t = (1 - sigma) * x0 + sigma * noise
        t = torch.full((len(idx),), sigma * 1000, device=device)
        with torch.no_grad():
            return model(x_t.to(dtype), t, text, return_dict=False)[0].float(), noise - x0

    masks = {name: (lambda q, k, kw=kw: sk.predict_block_mask(q, k, layout="NHD", **kw)) for name, kw in MASKS.items()}
    for sigma in (0.3, 0.6, 0.9):
        with AttentionMassProbe(model, masks=masks) as probe:
            v_dense, target = velocity(sigma)
        row = {"loss_rel": rel_mse(v_dense, target), "attention": probe.results()}
        for name, kw in MASKS.items():
            apply_sparge(model, **kw)
            try:
                v_sparse, _ = velocity(sigma)
            finally:
                remove_sparge(model)
            row[f"sparse_rel_mse.{name}"] = rel_mse(v_sparse, v_dense)
        report["per_sigma"][str(sigma)] = row

    print("| σ | loss rel | top5% | top10% | top20% | " + " | ".join(f"{n} recall / density / v rel-MSE" for n in MASKS)
          + " |")
    print("|---" * (5 + len(MASKS)) + "|")
    for sigma, row in report["per_sigma"].items():
        m = row["attention"]["mean"]
        cells = [f"{m[f'{n}.recall']:.3f} / {m[f'{n}.density']:.3f} / {row[f'sparse_rel_mse.{n}']:.4f}"
                 for n in MASKS]
        print(f"| {sigma} | {row['loss_rel']:.4f} | {m['top0.05']:.3f} | {m['top0.1']:.3f} | {m['top0.2']:.3f} | "
              + " | ".join(cells) + " |")
    for layer, r in report["per_sigma"]["0.6"]["attention"].items():
        print(f"  σ 0.6 {layer}: top5% {r['top0.05']:.3f}")
    t0 = time.perf_counter()
    captions = world.captions(idx)
    videos = sample_videos(model, captions, noise, SamplerConfig(steps=25, guidance=4.0, shift=args.shift))
    report["sample_s"] = time.perf_counter() - t0
    report["captions"] = [c.text for c in captions]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe.json").write_text(json.dumps(report, indent=1))
        import imageio

        frames = [0, size.frames // 3, 2 * size.frames // 3, size.frames - 1]
        rows = [np.concatenate([np.concatenate([(v[:, f].permute(1, 2, 0).cpu().numpy() + 1) / 2 for f in frames], 1),
                                np.ones((size.height, 4, 3)),
                                np.concatenate([(r[:, f].permute(1, 2, 0).cpu().numpy() + 1) / 2 for f in frames], 1)],
                               1) for v, r in zip(videos, x0, strict=True)]
        imageio.imwrite(args.out / "samples.png", (np.clip(np.concatenate(rows, 0), 0, 1) * 255).astype(np.uint8))


if __name__ == "__main__":
    main()
