"""The fidelity demo (issue 11's main job): the world teacher with dense attention, the same teacher with sparse
attention (training-free), and the distilled sparse student generate the same captions from the same noise.
Prints a table (achieved density, PSNR/SSIM against the dense teacher's videos, caption accuracy by the world
classifier, self-attention and step time, speedup), writes a side-by-side GIF and a JSON report.

    python tools/world/demo.py [--teacher teacher] [--student student] [--out out/world-demo]

On a GPU it runs the CUDA kernels at 16x64x64 (the largest size the shipped teacher passed its gate at); on a CPU
the PyTorch reference at 8x64x64, where the times say nothing about speed. Models are shipped names ("teacher",
"student") or diffusers folders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from ablation import write_gif  # noqa: E402
from gate_teacher import ATTRIBUTES  # noqa: E402
from sample_quality import SampleSet, generate_with_sparge, quality  # noqa: E402
from train_classifier import parse_size  # noqa: E402

from sparge_pipelines import SpargeConfig  # noqa: E402
from sparge_pipelines.config import trained_sparge_fields  # noqa: E402
from sparge_pipelines.world import WorldSize  # noqa: E402
from sparge_pipelines.world.classifier import load_classifier  # noqa: E402
from sparge_pipelines.world.model import load_world_transformer, shipped_models, world_model_dir  # noqa: E402
from sparge_pipelines.world.sampler import SamplerConfig  # noqa: E402
from sparge_train.config import load_config  # noqa: E402

# The mask the shipped student is distilled at (5% density at 16x64x64), read from its training config, for a run
# without a distilled student's sparge.json to read it from
STUDENT_CONFIG = Path(__file__).resolve().parents[2] / "packages/sparge-train/examples/world_student.yaml"
DEFAULT_MASK = {k: getattr(load_config(STUDENT_CONFIG).sparge, k) for k in ("topk", "topp", "token_order")}
ALL_DENSE = 1 << 30  # dense_steps beyond any sampler: SDPA in every step, timed by the same hook as sparse runs


def generate(model, samples: SampleSet, config: SpargeConfig, progress: tqdm) -> tuple[torch.Tensor, dict]:
    """Videos of `samples` with `model` under `config`, and the run's density and times."""
    sync = torch.cuda.synchronize if samples.device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    videos, state = generate_with_sparge(samples, model, config, on_step=lambda _: progress.update(1))
    sync()
    seconds = time.perf_counter() - start
    density = state.stats.summary()["overall"] if state.stats is not None else 1.0
    calls = samples.sampler.steps * (2 if samples.sampler.guidance != 1.0 else 1) * samples.batches
    return videos, {"density": density, "step_ms": 1e3 * seconds / calls,
                    "attention_ms": sum(state.timer.totals_ms().values()) / calls}


def markdown(report: dict) -> str:
    lines = [f"| {report['size']}, {report['videos']} videos, {report['device']} | density | PSNR vs dense | SSIM | "
             + " | ".join(ATTRIBUTES) + " | self-attention ms/call | step ms/call | speedup |",
             "|---|" + "---:|" * (len(ATTRIBUTES) + 6)]
    dense_ms = report["rows"][0]["step_ms"]
    for row in report["rows"]:
        acc = row["accuracy"]
        psnr = "–" if row.get("psnr") is None else f"{row['psnr']:.2f}"
        ssim = "–" if row.get("ssim") is None else f"{row['ssim']:.3f}"
        lines.append(f"| {row['name']} | {row['density']:.3f} | {psnr} | {ssim} | "
                     + " | ".join(f"{acc[a]:.2f}" for a in ATTRIBUTES)
                     + f" | {row['attention_ms']:.1f} | {row['step_ms']:.1f} | {dense_ms / row['step_ms']:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="teacher", help="shipped name or folder (default: the shipped teacher)")
    p.add_argument("--student", default="student", help="shipped name or folder; 'none' skips the distilled row")
    p.add_argument("--classifier", default=None, help="default: the shipped classifier")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=parse_size, default=None, help="FxHxW; default 16x64x64 on GPU, 8x64x64 on CPU")
    p.add_argument("--videos", type=int, default=None, help="captions (default 8 on GPU, 2 on CPU)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    # Unset: the student's trained mask (sparge.json beside its weights), else DEFAULT_MASK
    p.add_argument("--topk", type=float, default=None, help=f"default: the student's, else {DEFAULT_MASK['topk']}")
    p.add_argument("--topp", type=float, default=None, help=f"default: the student's, else {DEFAULT_MASK['topp']}")
    p.add_argument("--token-order", choices=("1d", "tiled"), default=None,
                   help=f"default: the student's, else {DEFAULT_MASK['token_order']}")
    p.add_argument("--out", type=Path, default=Path("out/world-demo"))
    args = p.parse_args()
    on_gpu = args.device == "cuda"
    if args.teacher == "none":
        p.error("--teacher: the dense teacher is the reference of every row; it cannot be 'none'")
    size = args.size or (WorldSize(16, 64, 64) if on_gpu else WorldSize(8, 64, 64))
    count = args.videos or (8 if on_gpu else 2)
    if count < 2:
        p.error(f"--videos: must be >= 2 (KID and the Frechet distance compare sets of videos), got {count}")
    if args.steps < 1:
        p.error(f"--steps: must be >= 1, got {args.steps}")
    dtype = torch.bfloat16 if on_gpu else torch.float32

    def load(flag: str, name: str):
        try:
            return load_world_transformer(name, device=args.device, dtype=dtype)
        except FileNotFoundError as err:  # neither a shipped name nor a model folder: the loader says which
            p.error(f"{flag}: {err}")

    teacher = load("--teacher", args.teacher)
    models = [("teacher, dense attention", teacher, False), ("teacher, sparse (training-free)", teacher, True)]
    trained: dict = {}
    if args.student != "none" and (args.student != "student" or "student" in shipped_models()):
        models.append(("student, sparse (distilled)", load("--student", args.student), True))
        trained = trained_sparge_fields(world_model_dir(args.student))  # the folder the loader just read
    # both sparse rows share one mask, so the rows differ by training alone
    mask = {**DEFAULT_MASK, **trained, **{k: v for k in DEFAULT_MASK if (v := getattr(args, k)) is not None}}
    classifier = load_classifier(args.classifier, device=args.device)
    samples = SampleSet(size, count, args.device, SamplerConfig(steps=args.steps, guidance=args.guidance))
    sparse = SpargeConfig(**mask, collect_stats=True, time_attention=True)
    dense = SpargeConfig(dense_steps=ALL_DENSE, time_attention=True)
    print(f"{len(models)} runs of {count} videos at {size.frames}x{size.height}x{size.width} on {args.device} "
          f"({'CUDA kernels' if on_gpu else 'PyTorch reference: slow, times say nothing about speed on a GPU'})")
    rows, columns = [], []
    with tqdm(total=len(models) * samples.batches * args.steps, unit="step") as progress:
        for name, model, is_sparse in models:
            videos, timing = generate(model, samples, sparse if is_sparse else dense, progress)
            rows.append({"name": name, **timing, **quality(classifier, samples, videos,
                                                            reference=columns[0] if columns else None)})
            columns.append(videos)
    report = {"size": f"{size.frames}x{size.height}x{size.width}", "videos": count, "device": args.device,
              "captions": [c.text for c in samples.captions], "sampler": vars(samples.sampler),
              "sparse": {k: list(v) if isinstance(v, tuple) else v for k, v in mask.items()}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    write_gif(args.out / "side_by_side.gif", [c[:4].cpu() for c in columns])
    print(markdown(report))
    print(f"columns of {args.out / 'side_by_side.gif'}: " + " | ".join(name for name, _, _ in models))
    if not on_gpu:
        print("speed needs a GPU: on a CPU both paths run the PyTorch reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
