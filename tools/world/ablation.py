"""SpargeAttention2's ablation on the sparge world: Top-k vs Top-p vs hybrid masks at matched sparsity,
training-free and fine-tuned (velocity distillation vs diffusion loss), against the dense teacher.

    python tools/world/ablation.py --teacher <folder> --out tools/results/world/ablation   # GPU: full size

Training-free: for each mask kind and token order, the mask parameter is bisected until the achieved density
(measured by apply_sparge's statistics over all layers) is the target +- tolerance; the velocity error vs the
teacher is then measured per σ, plus a curve over densities. Fine-tuned (--finetune-steps > 0): each arm runs
`sparge-train fit` (examples/world_distill.yaml) from the teacher on the shifted split for the same steps, per
seed, and its sparse student is scored the same way. Writes ablation.json and ablation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sample_quality import SampleSet, generate_with_sparge, quality  # noqa: E402

from sparge_pipelines import SpargeConfig, apply_sparge, remove_sparge  # noqa: E402
from sparge_pipelines.world import SpargeWorld, WorldSize  # noqa: E402
from sparge_pipelines.world.model import load_world_transformer  # noqa: E402
from sparge_pipelines.world.sampler import SamplerConfig, sample_noise  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("topk", "topp", "hybrid")
SIGMAS = (0.2, 0.45, 0.75)
HYBRID_TOPK_SHARE = 0.6  # hybrid: Top-k keeps 60% of the target density, Top-p the rest where rows are peaked


@dataclass(frozen=True)
class MaskSetting:
    kind: str
    token_order: str
    topk: float
    topp: float
    density: float
    within_tolerance: bool

    def sparge_kwargs(self) -> dict:
        return dict(topk=self.topk, topp=self.topp, token_order=self.token_order)


class Probe:
    """Fixed held-out inputs (x_σ, t, text) at each σ, and the teacher's velocities on them."""

    def __init__(self, teacher, size: WorldSize, batch: int, device: str) -> None:
        world = SpargeWorld(size, split="heldout")
        idx = list(range(batch))
        dtype = teacher.patch_embedding.weight.dtype
        x0 = world.videos(idx, device=device)
        noise = sample_noise([20_000 + i for i in idx], size, device=device)
        self.text = world.text(idx, device=device, dtype=dtype)
        self.inputs = {s: ((1 - s) * x0 + s * noise).to(dtype) for s in SIGMAS}
        self.teacher_v = {s: self.velocity(teacher, s) for s in SIGMAS}

    @torch.no_grad()
    def velocity(self, model, sigma: float) -> torch.Tensor:
        x = self.inputs[sigma]
        t = torch.full((x.shape[0],), sigma * 1000.0, device=x.device)
        return model(x, t, self.text, return_dict=False)[0].float()

    def errors(self, model) -> dict[str, float]:
        """Velocity rel-MSE vs the teacher per σ."""
        out = {}
        for s in SIGMAS:
            v = self.velocity(model, s)
            ref = self.teacher_v[s]
            out[str(s)] = float(((v - ref) ** 2).sum() / (ref ** 2).sum())
        return out

    def density(self, model, kind: str, token_order: str, value: float, target: float) -> tuple[float, dict]:
        kwargs = mask_params(kind, value, target)
        state = apply_sparge(model, **kwargs, token_order=token_order, collect_stats=True)
        try:
            self.velocity(model, 0.45)
            summary = state.stats.summary()
        finally:
            remove_sparge(model)
        return float(summary["overall"]), kwargs


def mask_params(kind: str, value: float, target: float) -> dict:
    if kind == "topk":
        return dict(topk=value, topp=0.0)
    if kind == "topp":
        return dict(topk=0.0, topp=value)
    return dict(topk=HYBRID_TOPK_SHARE * target, topp=value)


def calibrate(probe: Probe, model, kind: str, token_order: str, target: float, tol: float) -> MaskSetting:
    """Bisect the kind's free parameter until the achieved density is target +- tol (density grows with it)."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(24):
        mid = (lo + hi) / 2
        density, kwargs = probe.density(model, kind, token_order, mid, target)
        if best is None or abs(density - target) < abs(best[0] - target):
            best = (density, kwargs)
        if abs(density - target) <= tol:
            break
        lo, hi = (mid, hi) if density < target else (lo, mid)
    density, kwargs = best
    # Top-k moves in steps of one key block per row: a target between two steps is missed, and said so.
    return MaskSetting(kind, token_order, kwargs["topk"], kwargs["topp"], density, abs(density - target) <= tol)


def sparse_errors(probe: Probe, model, setting: MaskSetting) -> dict[str, float]:
    apply_sparge(model, **setting.sparge_kwargs())
    try:
        return probe.errors(model)
    finally:
        remove_sparge(model)


def sparse_samples(samples: SampleSet, model, setting: MaskSetting | None) -> torch.Tensor:
    config = None if setting is None else SpargeConfig(**setting.sparge_kwargs())
    return generate_with_sparge(samples, model, config)[0]


def write_gif(path: Path, columns: list[torch.Tensor], fps: int = 8) -> None:
    """Side by side (one column per model), the first videos stacked vertically."""
    import imageio
    import numpy as np

    video = torch.cat([torch.cat(list(c), dim=-2) for c in columns], dim=-1)  # (3, F, rows·H, cols·W)
    frames = ((video.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    imageio.mimsave(path, list(frames), duration=1 / fps, loop=0)


def finetune(arm: str, loss: str, setting: MaskSetting | None, teacher: Path, out: Path, steps: int, seed: int,
             extra: list[str]) -> Path:
    """One fine-tuning arm through sparge-train fit; returns its export folder."""
    sets = [f"model.pretrained={teacher}", f"loss.kind={loss}", f"train.output_dir={out}",
            f"train.max_steps={steps}", f"train.seed={seed}", "train.resume=none"]
    if setting is None:
        sets.append("sparge.enabled=false")
    else:
        sets += [f"sparge.topk={setting.topk}", f"sparge.topp={setting.topp}",
                 f"sparge.token_order={setting.token_order}"]
    cmd = [sys.executable, "-m", "sparge_train", "fit", "--config",
           str(ROOT / "packages/sparge-train/examples/world_distill.yaml")]
    for s in sets + extra:
        cmd += ["--set", s]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode:
        raise RuntimeError(f"fine-tuning arm {arm} (seed {seed}) failed: see {log}")
    return out / "export"


def mean_ci(values: list[float]) -> dict:
    if len(values) < 2:
        return {"mean": values[0], "ci95": None, "n": len(values)}
    sd = statistics.stdev(values)
    return {"mean": statistics.fmean(values), "ci95": 1.96 * sd / len(values) ** 0.5, "n": len(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="the dense teacher's diffusers folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--density", type=float, default=0.05, help="matched density (0.05 = 95%% sparsity)")
    p.add_argument("--tolerance", type=float, default=0.003)
    p.add_argument("--curve", type=float, nargs="*", default=[0.03, 0.05, 0.1, 0.2])
    p.add_argument("--finetune-steps", type=int, default=0, help="0: training-free part only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fit-set", action="append", default=[], help="extra --set for every fine-tuning run")
    p.add_argument("--classifier", default=None, help="world classifier folder: adds sample-based quality")
    p.add_argument("--samples", type=int, default=32, help="generated videos per model (sample-based quality)")
    p.add_argument("--sample-steps", type=int, default=25)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    teacher = load_world_transformer(args.teacher, device=device, dtype=dtype)
    size = WorldSize(args.frames, args.size, args.size)
    probe = Probe(teacher, size, args.batch, device)
    report: dict = {"teacher": str(args.teacher), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "size": [size.frames, size.height, size.width], "target_density": args.density,
                    "training_free": {}, "curve": {}, "finetuned": {}}
    t0 = time.perf_counter()
    settings: dict[tuple[str, str], MaskSetting] = {}
    for kind in KINDS:
        for order in ("1d", "tiled"):
            s = calibrate(probe, teacher, kind, order, args.density, args.tolerance)
            settings[(kind, order)] = s
            report["training_free"][f"{kind}/{order}"] = {**s.__dict__, "rel_mse": sparse_errors(probe, teacher, s)}
        for d in args.curve:
            s = calibrate(probe, teacher, kind, "1d", d, max(args.tolerance, 0.06 * d))
            report["curve"].setdefault(kind, []).append({**s.__dict__, "rel_mse": sparse_errors(probe, teacher, s)})
    report["training_free_s"] = time.perf_counter() - t0
    samples = classifier = teacher_videos = None
    gif_columns: list[torch.Tensor] = []
    if args.classifier:
        from sparge_pipelines.world.classifier import load_classifier

        classifier = load_classifier(args.classifier, device=device)
        samples = SampleSet(size, args.samples, device, SamplerConfig(steps=args.sample_steps))
        teacher_videos = samples.generate(teacher)
        report["samples"] = {"teacher (dense)": quality(classifier, samples, teacher_videos)}
        for kind in KINDS:
            videos = sparse_samples(samples, teacher, settings[(kind, "1d")])
            report["samples"][f"training-free {kind}"] = quality(classifier, samples, videos, teacher_videos)
            if kind == "hybrid":
                gif_columns = [teacher_videos[:4], videos[:4]]

    if args.finetune_steps > 0:
        arms = {"velocity+hybrid": ("velocity", settings[("hybrid", "1d")]),
                "diffusion+hybrid": ("diffusion", settings[("hybrid", "1d")]),
                "velocity+topk": ("velocity", settings[("topk", "1d")]),
                "velocity+topp": ("velocity", settings[("topp", "1d")]),
                "dense diffusion (control)": ("diffusion", None)}
        for arm, (loss, setting) in arms.items():
            per_seed = []
            for seed in args.seeds:
                name = arm.split(" ")[0].replace("+", "_")
                export = finetune(arm, loss, setting, args.teacher, args.out / "runs" / f"{name}_s{seed}",
                                  args.finetune_steps, seed, args.fit_set)
                student = load_world_transformer(export, device=device, dtype=dtype)
                errs = probe.errors(student) if setting is None else sparse_errors(probe, student, setting)
                if samples is not None:
                    videos = sparse_samples(samples, student, setting)
                    errs["samples"] = quality(classifier, samples, videos, teacher_videos)
                    if arm == "velocity+hybrid" and seed == args.seeds[0]:
                        gif_columns.append(videos[:4])
                per_seed.append(errs)
                del student
            report["finetuned"][arm] = {
                "setting": setting.__dict__ if setting else None,
                "rel_mse": {s: mean_ci([e[s] for e in per_seed]) for s in map(str, SIGMAS)},
                "per_seed": per_seed}
    args.out.mkdir(parents=True, exist_ok=True)
    if gif_columns:
        write_gif(args.out / "teacher_trainingfree_distilled.gif", gif_columns)
    (args.out / "ablation.json").write_text(json.dumps(report, indent=1))
    (args.out / "ablation.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    sig = [str(s) for s in SIGMAS]
    lines = [f"# Ablation on the sparge world ({r['device']}, {r['size']}, target density {r['target_density']})",
             "", "## Training-free, matched density: velocity rel-MSE vs the dense teacher", "",
             "| mask / token order | topk | topp | density | " + " | ".join(f"σ {s}" for s in sig) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(sig)]
    for name, row in r["training_free"].items():
        lines.append(f"| {name} | {row['topk']:.4f} | {row['topp']:.4f} | {row['density']:.4f} | "
                     + " | ".join(f"{row['rel_mse'][s]:.4f}" for s in sig) + " |")
    missed = [n for n, row in r["training_free"].items() if not row["within_tolerance"]]
    if missed:
        lines += ["", f"Outside the density tolerance (closest setting used): {', '.join(missed)}"]
    lines += ["", "## Density curve (token order 1d): velocity rel-MSE at σ 0.45", "",
              "| mask | " + " | ".join(f"target {i + 1}" for i in range(len(next(iter(r["curve"].values()), []))))
              + " |", "|---|" + "---:|" * len(next(iter(r["curve"].values()), []))]
    for kind, rows in r["curve"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{d['rel_mse']['0.45']:.4f} (d {d['density']:.3f})" for d in rows)
                     + " |")
    if r["finetuned"]:
        lines += ["", "## Fine-tuned on the shifted split: velocity rel-MSE vs the teacher (mean ± 95% CI over seeds)",
                  "", "| arm | " + " | ".join(f"σ {s}" for s in sig) + " |", "|---|" + "---:|" * len(sig)]
        for arm, row in r["finetuned"].items():
            cells = []
            for s in sig:
                m = row["rel_mse"][s]
                cells.append(f"{m['mean']:.4f}" + (f" ± {m['ci95']:.4f}" if m["ci95"] is not None else ""))
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if r.get("samples"):
        lines += ["", "## Samples (same captions and noise): caption accuracy, PSNR/SSIM vs the teacher, KID vs real",
                  "", "| model | colour | digit | direction | background | all | PSNR | SSIM | KID |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = dict(r["samples"])
        for arm, row in r["finetuned"].items():
            for i, e in enumerate(row["per_seed"]):
                if "samples" in e:
                    rows[f"{arm} (seed {i})"] = e["samples"]
        for name, q in rows.items():
            a = q["accuracy"]
            lines.append(f"| {name} | {a['colour']:.3f} | {a['digit']:.3f} | {a['direction']:.3f} | "
                         f"{a['background']:.3f} | {a['all']:.3f} | {q.get('psnr', float('nan')):.2f} | "
                         f"{q.get('ssim', float('nan')):.3f} | {q['kid']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
