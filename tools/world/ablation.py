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
from concurrent.futures import ThreadPoolExecutor
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


def rel_mse(v: torch.Tensor, ref: torch.Tensor) -> float:
    """‖v − ref‖² / ‖ref‖²."""
    return float(((v - ref) ** 2).sum() / (ref ** 2).sum())


class Probe:
    """Fixed held-out inputs (x_σ, t, text) at each σ, and the teacher's velocities on them. Seed s draws its own
    videos and noises, so seeds are independent held-out sets."""

    def __init__(self, teacher, size: WorldSize, batch: int, device: str, seed: int = 0) -> None:
        world = SpargeWorld(size, split="heldout")
        idx = list(range(seed * batch, (seed + 1) * batch))
        dtype = teacher.patch_embedding.weight.dtype
        x0 = world.videos(idx, device=device)
        noise = sample_noise([20_000 + i for i in idx], size, device=device)
        self.text = world.text(idx, device=device, dtype=dtype)
        self.inputs = {s: ((1 - s) * x0 + s * noise).to(dtype) for s in SIGMAS}
        self.teacher_v = {s: self.velocity(teacher, s) for s in SIGMAS}

    @torch.no_grad()
    def velocity(self, model, sigma: float, text: torch.Tensor | None = None) -> torch.Tensor:
        """The model's velocity at σ on the probe's captions (or on `text`, e.g. the null caption)."""
        x = self.inputs[sigma]
        t = torch.full((x.shape[0],), sigma * 1000.0, device=x.device)
        return model(x, t, self.text if text is None else text, return_dict=False)[0].float()

    def errors(self, model) -> dict[str, float]:
        """Velocity rel-MSE vs the teacher per σ."""
        return {str(s): rel_mse(self.velocity(model, s), self.teacher_v[s]) for s in SIGMAS}

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


def sparse_errors(probes: list[Probe], model, setting: MaskSetting | None) -> list[dict[str, float]]:
    """Velocity rel-MSE per σ on each probe set (one dict per seed); setting None: the model as it is."""
    if setting is None:
        return [probe.errors(model) for probe in probes]
    apply_sparge(model, **setting.sparge_kwargs())
    try:
        return [probe.errors(model) for probe in probes]
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


@dataclass(frozen=True)
class Arm:
    """One fine-tuning arm: its loss and the sparse attention it trains under (None: dense)."""

    name: str
    loss: str
    setting: MaskSetting | None

    @property
    def slug(self) -> str:
        return self.name.split(" ")[0].replace("+", "_")

    def run_dir(self, out: Path, seed: int) -> Path:
        """Where this arm's fit of `seed` writes (its log beside it)."""
        return out / "runs" / f"{self.slug}_s{seed}"


def fit_command(arm: Arm, teacher: Path, out: Path, steps: int, seed: int, size: WorldSize,
                extra: list[str]) -> list[str]:
    """`sparge-train fit` of one arm and seed, from the teacher, on the shifted split at the ablation's size; the
    seed draws the arm's own data, noise and σ."""
    sets = [f"model.pretrained={teacher}", f"loss.kind={arm.loss}", f"train.output_dir={out}",
            f"train.max_steps={steps}", f"train.seed={seed}", f"data.world.seed={seed}", "train.resume=none",
            f"data.world.sizes=[[{size.frames},{size.height},{size.width}]]"]
    if arm.setting is None:
        sets.append("sparge.enabled=false")
    else:
        sets += [f"sparge.topk={arm.setting.topk}", f"sparge.topp={arm.setting.topp}",
                 f"sparge.token_order={arm.setting.token_order}"]
    cmd = [sys.executable, "-m", "sparge_train", "fit", "--config",
           str(ROOT / "packages/sparge-train/examples/world_distill.yaml")]
    for s in sets + extra:
        cmd += ["--set", s]
    return cmd


def run_fits(runs: dict[Path, list[str]], parallel: int) -> dict[Path, float]:
    """Run the fits, `parallel` at a time (small models leave a GPU mostly idle: arms share it); each logs beside
    its output folder. Returns wall seconds per run; a failed run raises with its log."""
    def one(out: Path) -> float:
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(out.with_suffix(".log"), "w") as f:
            proc = subprocess.run(runs[out], stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
        if proc.returncode:
            raise RuntimeError(f"fine-tuning run {out.name} failed (exit {proc.returncode}): "
                               f"see {out.with_suffix('.log')}")
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return dict(zip(runs, pool.map(one, runs)))


def mean_ci(values: list[float]) -> dict:
    if len(values) < 2:
        return {"mean": values[0], "ci95": None, "n": len(values)}
    sd = statistics.stdev(values)
    return {"mean": statistics.fmean(values), "ci95": 1.96 * sd / len(values) ** 0.5, "n": len(values)}


def summarize(per_seed: list[dict[str, float]]) -> dict:
    """Mean ± 95% CI over seeds per σ, and of the mean over σ (the one number the verdict and the plot use)."""
    out = {s: mean_ci([e[s] for e in per_seed]) for s in map(str, SIGMAS)}
    out["mean"] = mean_ci([statistics.fmean(e[s] for s in map(str, SIGMAS)) for e in per_seed])
    return out


def training_free(probes: list[Probe], teacher, args) -> tuple[dict, dict, dict[tuple[str, str], MaskSetting]]:
    """Every mask kind and token order calibrated to the target density on the first probe set, scored on all;
    and the density curve of each kind in the arms' token order."""
    table, curve, settings = {}, {}, {}
    for kind in KINDS:
        for order in ("1d", "tiled"):
            s = calibrate(probes[0], teacher, kind, order, args.density, args.tolerance)
            settings[(kind, order)] = s
            per_seed = sparse_errors(probes, teacher, s)
            table[f"{kind}/{order}"] = {**s.__dict__, "rel_mse": summarize(per_seed), "per_seed": per_seed}
        for d in args.curve:
            s = calibrate(probes[0], teacher, kind, args.token_order, d, max(args.tolerance, 0.06 * d))
            curve.setdefault(kind, []).append({**s.__dict__, "rel_mse": summarize(sparse_errors(probes, teacher, s))})
    return table, curve, settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True, help="the dense teacher's diffusers folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8, help="videos per held-out probe set (one set per seed)")
    p.add_argument("--density", type=float, default=0.05, help="matched density (0.05 = 95%% sparsity)")
    p.add_argument("--tolerance", type=float, default=0.003)
    p.add_argument("--curve", type=float, nargs="*", default=[0.03, 0.05, 0.08, 0.12, 0.2],
                   help="densities of the training-free curve (0.03-0.2 = 97-80%% sparsity)")
    p.add_argument("--token-order", choices=("1d", "tiled"), default="tiled",
                   help="token order of the curve, the samples and the fine-tuning arms")
    p.add_argument("--finetune-steps", type=int, default=0, help="0: training-free part only")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=None, help="fine-tuning runs at once (default 5 on GPU, 1 on CPU)")
    p.add_argument("--fit-set", action="append", default=[], help="extra --set for every fine-tuning run")
    p.add_argument("--classifier", default=None, help="world classifier folder: adds sample-based quality")
    p.add_argument("--samples", type=int, default=32, help="generated videos per model (sample-based quality)")
    p.add_argument("--sample-steps", type=int, default=25)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    teacher = load_world_transformer(args.teacher, device=device, dtype=dtype)
    size = WorldSize(args.frames, args.size, args.size)
    probes = [Probe(teacher, size, args.batch, device, seed) for seed in args.seeds]
    report: dict = {"teacher": str(args.teacher), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "date": time.strftime("%Y-%m-%d"), "size": [size.frames, size.height, size.width],
                    "target_density": args.density, "token_order": args.token_order, "seeds": args.seeds,
                    "probe_videos_per_seed": args.batch, "finetune_steps": args.finetune_steps}
    t0 = time.perf_counter()
    report["training_free"], report["curve"], settings = training_free(probes, teacher, args)
    report["training_free_s"] = time.perf_counter() - t0
    report["finetuned"] = {}
    samples = classifier = teacher_videos = None
    gif_columns: list[torch.Tensor] = []
    if args.classifier:
        from sparge_pipelines.world.classifier import load_classifier

        classifier = load_classifier(args.classifier, device=device)
        samples = SampleSet(size, args.samples, device, SamplerConfig(steps=args.sample_steps))
        teacher_videos = samples.generate(teacher)
        report["samples"] = {"teacher (dense)": quality(classifier, samples, teacher_videos)}
        for kind in KINDS:
            videos = sparse_samples(samples, teacher, settings[(kind, args.token_order)])
            report["samples"][f"training-free {kind}"] = quality(classifier, samples, videos, teacher_videos)
            if kind == "hybrid":
                gif_columns = [teacher_videos[:4], videos[:4]]

    if args.finetune_steps > 0:
        order = args.token_order
        arms = [Arm("velocity+hybrid", "velocity", settings[("hybrid", order)]),
                Arm("diffusion+hybrid", "diffusion", settings[("hybrid", order)]),
                Arm("velocity+topk", "velocity", settings[("topk", order)]),
                Arm("velocity+topp", "velocity", settings[("topp", order)]),
                Arm("dense diffusion (control)", "diffusion", None)]
        runs = {(out := arm.run_dir(args.out, seed)): fit_command(arm, args.teacher, out, args.finetune_steps, seed,
                                                                  size, args.fit_set)
                for arm in arms for seed in args.seeds}
        t0 = time.perf_counter()
        wall = run_fits(runs, args.parallel or (5 if device == "cuda" else 1))
        report["finetune_s"] = time.perf_counter() - t0
        for arm in arms:
            per_seed, seed_samples = [], []
            for seed in args.seeds:
                student = load_world_transformer(arm.run_dir(args.out, seed) / "export", device=device, dtype=dtype)
                # each student on every probe set, averaged: the spread over seeds is the training seed's
                errs = sparse_errors(probes, student, arm.setting)
                per_seed.append({s: statistics.fmean(e[s] for e in errs) for s in map(str, SIGMAS)})
                if samples is not None:
                    videos = sparse_samples(samples, student, arm.setting)
                    seed_samples.append(quality(classifier, samples, videos, teacher_videos))
                    if arm.name == "velocity+hybrid" and seed == args.seeds[0]:
                        gif_columns.append(videos[:4])
                del student
            report["finetuned"][arm.name] = {
                "loss": arm.loss, "setting": arm.setting.__dict__ if arm.setting else None,
                "rel_mse": summarize(per_seed), "per_seed": per_seed,
                "fit_wall_s": [wall[arm.run_dir(args.out, seed)] for seed in args.seeds]}
            if seed_samples:
                report["finetuned"][arm.name]["samples"] = seed_samples
    args.out.mkdir(parents=True, exist_ok=True)
    if gif_columns:
        write_gif(args.out / "teacher_trainingfree_distilled.gif", gif_columns)
    report["verdict"] = verdict(report)
    (args.out / "ablation.json").write_text(json.dumps(report, indent=1))
    (args.out / "ablation.md").write_text(markdown(report))
    plot(report, args.out / "ablation.png")
    print(markdown(report))


def _order_claim(values: dict[str, float], claimed: list[str]) -> dict:
    """Does `claimed` (best first, lower is better) hold on `values`, and by how much each step."""
    ranked = sorted(values, key=values.get)
    steps = [{"better": a, "worse": b, "ratio": values[b] / values[a] if values[a] > 0 else float("inf")}
             for a, b in zip(claimed, claimed[1:])]
    return {"claimed": claimed, "measured": ranked, "held": ranked == claimed, "steps": steps,
            "values": values}


def verdict(r: dict) -> dict:
    """The paper's orderings, checked on the mean velocity error over σ (lower is better)."""
    order = r["token_order"]
    tf = {k: r["training_free"][f"{k}/{order}"]["rel_mse"]["mean"]["mean"] for k in KINDS}
    out = {"training_free: hybrid < topk < topp": _order_claim(tf, ["hybrid", "topk", "topp"])}
    ft = r.get("finetuned", {})
    if {"velocity+hybrid", "diffusion+hybrid"} <= set(ft):
        values = {"distillation": ft["velocity+hybrid"]["rel_mse"]["mean"]["mean"],
                  "diffusion loss": ft["diffusion+hybrid"]["rel_mse"]["mean"]["mean"], "training-free": tf["hybrid"]}
        out["hybrid: distillation < diffusion loss < training-free"] = _order_claim(
            values, ["distillation", "diffusion loss", "training-free"])
    if {"velocity+hybrid", "velocity+topk", "velocity+topp"} <= set(ft):
        values = {k: ft[f"velocity+{k}"]["rel_mse"]["mean"]["mean"] for k in KINDS}
        out["distilled: hybrid < topk < topp"] = _order_claim(values, ["hybrid", "topk", "topp"])
    return out


def _fmt(m: dict, digits: int = 4) -> str:
    return f"{m['mean']:.{digits}f}" + (f" ± {m['ci95']:.{digits}f}" if m.get("ci95") is not None else "")


def markdown(r: dict) -> str:
    sig = [str(s) for s in SIGMAS]
    n = len(r["seeds"])
    lines = [f"# Ablation on the sparge world ({r['device']}, {r['date']}, {'x'.join(map(str, r['size']))}, "
             f"target density {r['target_density']})", "",
             f"Velocity rel-MSE ‖v − v_teacher‖² / ‖v_teacher‖² on {n} held-out probe sets of "
             f"{r['probe_videos_per_seed']} videos (one per seed), mean ± 95% CI over seeds; `mean` is over σ.", "",
             "## Training-free, matched density", "",
             "| mask / token order | topk | topp | density | " + " | ".join(f"σ {s}" for s in sig) + " | mean |",
             "|---|---:|---:|---:|" + "---:|" * (len(sig) + 1)]
    for name, row in r["training_free"].items():
        lines.append(f"| {name} | {row['topk']:.4f} | {row['topp']:.4f} | {row['density']:.4f} | "
                     + " | ".join(_fmt(row["rel_mse"][s]) for s in sig + ["mean"]) + " |")
    missed = [n for n, row in r["training_free"].items() if not row["within_tolerance"]]
    if missed:
        lines += ["", f"Outside the density tolerance (closest setting used): {', '.join(missed)}"]
    lines += ["", f"## Density curve (token order {r['token_order']}): mean velocity rel-MSE over σ", "",
              "| mask | " + " | ".join(f"{100 * (1 - d['density']):.1f}% sparse" for d in
                                      next(iter(r["curve"].values()), [])) + " |",
              "|---|" + "---:|" * len(next(iter(r["curve"].values()), []))]
    for kind, rows in r["curve"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{_fmt(d['rel_mse']['mean'])} (d {d['density']:.3f})"
                                                  for d in rows) + " |")
    if r["finetuned"]:
        lines += ["", f"## Fine-tuned on the shifted split ({r['finetune_steps']} steps per arm, seeds "
                  f"{r['seeds']}), sparse as trained", "",
                  "| arm | " + " | ".join(f"σ {s}" for s in sig) + " | mean |", "|---|" + "---:|" * (len(sig) + 1)]
        for arm, row in r["finetuned"].items():
            lines.append(f"| {arm} | " + " | ".join(_fmt(row["rel_mse"][s]) for s in sig + ["mean"]) + " |")
    if r.get("samples"):
        lines += ["", "## Samples (same captions and noise): caption accuracy, PSNR/SSIM vs the dense teacher, KID vs "
                  "real videos", "", "| model | colour | digit | direction | background | all | PSNR | SSIM | KID |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = dict(r["samples"])
        for arm, row in r["finetuned"].items():
            for seed, q in zip(r["seeds"], row.get("samples", [])):
                rows[f"{arm} (seed {seed})"] = q
        for name, q in rows.items():
            a = q["accuracy"]
            lines.append(f"| {name} | {a['colour']:.3f} | {a['digit']:.3f} | {a['direction']:.3f} | "
                         f"{a['background']:.3f} | {a['all']:.3f} | {q.get('psnr', float('nan')):.2f} | "
                         f"{q.get('ssim', float('nan')):.3f} | {q['kid']:.4f} |")
    lines += ["", "## The paper's orderings, measured (mean velocity rel-MSE over σ; lower is better)", "",
              "Each ratio divides the error of the arm the paper ranks lower by the one it ranks higher: > 1 where "
              "that step held.", ""]
    for claim, v in r["verdict"].items():
        # each ratio is claimed-worse / claimed-better: above 1 where that step of the claim held
        steps = "; ".join(f"{s['worse']} / {s['better']} = {s['ratio']:.2f}x" for s in v["steps"])
        lines.append(f"- {claim}: **{'held' if v['held'] else 'did not hold'}** (measured "
                     f"{' < '.join(v['measured'])}; {steps})")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    """Velocity error vs sparsity per mask kind (training-free curve), the fine-tuned arms at their sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for kind, rows in r["curve"].items():
        xs = [100 * (1 - d["density"]) for d in rows]
        ys = [d["rel_mse"]["mean"]["mean"] for d in rows]
        err = [d["rel_mse"]["mean"]["ci95"] or 0.0 for d in rows]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"training-free {kind}")
    for marker, (arm, row) in zip("s^vD", ((a, r) for a, r in r["finetuned"].items() if r["setting"])):
        m = row["rel_mse"]["mean"]
        ax.errorbar([100 * (1 - row["setting"]["density"])], [m["mean"]], yerr=[m["ci95"] or 0.0], marker=marker,
                    linestyle="none", capsize=3, label=f"fine-tuned {arm}")
    for arm, row in r["finetuned"].items():
        if not row["setting"]:  # a dense model has no sparsity: a level to compare with, not a point on the axis
            ax.axhline(row["rel_mse"]["mean"]["mean"], color="grey", linestyle="--", label=f"fine-tuned {arm}")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (% of key blocks skipped)")
    ax.set_ylabel("velocity rel-MSE vs dense teacher (mean over σ)")
    ax.set_title(f"sparge world {'x'.join(map(str, r['size']))}, token order {r['token_order']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
