"""Benchmark: velocity-distillation steps of `sparge-train fit`, sparse student vs dense student, one GPU.

Real Wan2.1 transformer config (random init), 480p / 81 frames by default: latent 16x21x60x104 → 32760 tokens,
batch 1, 512 text tokens (64 non-zero). DeepSpeed ZeRO-2, bf16, gradient checkpointing, fused torch AdamW.
Each mode runs `python -m sparge_train fit` in its own process (clean memory accounting), `--warmup` steps then
`--steps` timed steps; the table reports medians over the timed steps, from the run's metrics.jsonl:

  sparse   student = apply_sparge(topk, topp) on every self-attention; teacher dense (--backend)
  dense    student = the same model with dense self-attention (--backend); teacher dense (--backend)
  sparse-<path>  sparse with the backward's dK/dV kernel pinned (SPARGE_BACKWARD_PATH=<path>: sm80, sm90, auto)
                 in that run's process, e.g. sparse-sm80 against sparse (auto: the Hopper kernel on sm_90)
  sparse-<dq>    sparse with the backward's dQ mode set (SPARGE_DQ_ACCUMULATE=<dq>: bulk, atomic, spill), e.g.
                 sparse-spill against sparse

The teacher forward is dense in both, so the step can gain at most about (teacher + student) / teacher-only
over the student's share. Phase times come from CUDA events (train.time_phases). Random weights give
near-uniform pooled scores, on which Top-p keeps ~p of the blocks; Top-k alone pins the density (default
topk 0.05, topp 0: ~95% sparsity, as tools/bench_pipeline.py).

    python tools/bench_train.py [--model wan2.1-1.3b] [--steps 4] [--warmup 2] [--modes sparse,dense]
                                [--backend _native_cudnn] [--out results.md]
CPU smoke test (no cuDNN there, so SDPA's default backend):
    DS_ACCELERATOR=cpu python tools/bench_train.py --model tiny --frames 13 --height 128 --width 128 --backend ""

Loss curves of two backward kernels (issue 13: the Hopper backward against SM80 over a 200-step distillation): run
each mode with `--losses-out DIR` (one mode per device call fits: ~2.3 s a step), which keeps every mode's
metrics.jsonl as DIR/<mode>.metrics.jsonl, then compare them anywhere:

    python tools/bench_train.py --modes sparse --warmup 0 --steps 200 --timeout 560 --losses-out $OUT
    python tools/bench_train.py --modes sparse-sm80 --warmup 0 --steps 200 --timeout 560 --losses-out $OUT
    python tools/bench_train.py --compare-losses DIR/sparse.metrics.jsonl DIR/sparse-sm80.metrics.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_RATIO = 1.6


def run_config(args, mode: str, out_dir: Path) -> dict:
    from sparge_train.presets import VideoShape, latent_shape, wan_config

    arch = wan_config(args.model)
    frames, height, width = latent_shape(VideoShape(args.frames, args.height, args.width))
    return {
        "model": {"preset": args.model, "gradient_checkpointing": True, "attention_backend": args.backend or None},
        "sparge": {"enabled": mode.startswith("sparse"), "topk": args.topk, "topp": args.topp},
        "loss": {"kind": "velocity"},
        "flow": {"shift": 3.0},
        "data": {"source": "synthetic", "text_len": 512, "synthetic": {
            "num_samples": args.warmup + args.steps, "latent_channels": arch["in_channels"],
            "latent_frames": frames, "latent_height": height, "latent_width": width, "text_tokens": 64,
            "text_dim": arch["text_dim"]}},
        "optim": {"lr": 1e-5},
        "deepspeed": {"zero_stage": 2, "precision": "auto"},
        "train": {"output_dir": str(out_dir), "max_steps": args.warmup + args.steps, "micro_batch_size": 1,
                  "save_every": 0, "save_at_end": False, "export_at_end": False, "tensorboard": False,
                  "progress_bar": False, "time_phases": True, "resume": "none"},
    }


def run_mode(args, mode: str, workdir: Path) -> dict:
    out = workdir / mode
    cfg_path = workdir / f"{mode}.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(args, mode, out), sort_keys=False))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if mode.startswith("sparse-"):
        from sparge_kernels.options import DQ_ACCUMULATE

        choice = mode.removeprefix("sparse-")
        env["SPARGE_DQ_ACCUMULATE" if choice in DQ_ACCUMULATE else "SPARGE_BACKWARD_PATH"] = choice
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sparge_train", "fit", "--config", str(cfg_path)], env=env,
                          capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    (workdir / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], sep="\n", file=sys.stderr)
        return {"mode": mode, "error": f"exit {proc.returncode}", "wall_s": wall}
    records = read_metrics(out / "metrics.jsonl")
    if args.losses_out:
        args.losses_out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "metrics.jsonl", args.losses_out / f"{mode}.metrics.jsonl")
    timed = [r for r in records if r["step"] > args.warmup and "step_time_s" in r]
    med = lambda key: statistics.median(r[key] for r in timed) if timed and key in timed[0] else float("nan")
    return {
        "mode": mode, "wall_s": wall, "steps": len(timed),
        "step_ms": 1e3 * med("step_time_s"), "tokens_per_s": med("tokens_per_s"),
        "teacher_ms": med("teacher_forward_ms"), "student_fwd_ms": med("student_forward_ms"),
        "student_bwd_ms": med("student_backward_ms"), "optim_ms": med("optimizer_step_ms"),
        "peak_gib": max(r.get("peak_mem_gib", float("nan")) for r in records if "step_time_s" in r),
        "loss": timed[-1]["loss"] if timed else float("nan"),
    }


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(path) if "loss" in r and "step" in r}


def compare_losses(a: Path, b: Path, every: int = 20) -> str:
    """Markdown: the two runs' per-step losses side by side (every `every`-th step and the last) and how far
    apart the curves are over the steps both logged."""
    la, lb = step_losses(a), step_losses(b)
    steps = sorted(set(la) & set(lb))
    if not steps:
        raise SystemExit(f"--compare-losses: no step logged a loss in both {a} and {b}")
    name_a, name_b = (p.name.removesuffix(".metrics.jsonl") for p in (a, b))
    rel = [abs(la[s] - lb[s]) / max(abs(la[s]), abs(lb[s]), 1e-12) for s in steps]
    lines = [f"| step | {name_a} loss | {name_b} loss | relative difference |", "|---:|---:|---:|---:|"]
    for i, s in enumerate(steps):
        if s % every == 0 or s == steps[0] or s == steps[-1]:
            lines.append(f"| {s} | {la[s]:.6g} | {lb[s]:.6g} | {rel[i]:.2e} |")
    tail = steps[len(steps) // 2:]
    mean = lambda d: statistics.fmean(d[s] for s in tail)  # noqa: E731
    lines += ["", f"- {len(steps)} steps logged by both; per-step relative difference: median "
              f"{statistics.median(rel):.2e}, max {max(rel):.2e}; mean loss over the last {len(tail)} steps: "
              f"{name_a} {mean(la):.6g}, {name_b} {mean(lb):.6g}"]
    return "\n".join(lines)


def planned_gib(args) -> tuple[float, float]:
    from sparge_train.plan import RUNTIME_RESERVE_BYTES, PlanRequest, memory_plan

    plan = memory_plan(PlanRequest(model=args.model, gpus_per_node=1, nodes=1, zero_stage=2, height=args.height,
                                   width=args.width, frames=args.frames))
    return plan.total_gpu_bytes / 2**30, (plan.total_gpu_bytes - RUNTIME_RESERVE_BYTES) / 2**30


def device_name() -> str:
    import torch

    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU, torch {torch.__version__}"


def format_table(args, rows: list[dict], plan: tuple[float, float]) -> str:
    from sparge_train.presets import VideoShape, sequence_length

    tokens = sequence_length(VideoShape(args.frames, args.height, args.width))
    lines = [
        f"## sparge-train distillation step: {args.model}, {args.frames}x{args.height}x{args.width} "
        f"({tokens} tokens), batch 1, ZeRO-2 bf16, 1 GPU",
        "",
        f"{device_name()}, {datetime.date.today()}. `python tools/bench_train.py {' '.join(sys.argv[1:])}` "
        f"(median of {args.steps} steps after {args.warmup} warmup). sparse: topk {args.topk}, topp {args.topp}; "
        f"dense attention backend: {args.backend or 'SDPA default'}; gradient checkpointing on.",
        "",
        "| student | step ms | tokens/s | teacher fwd ms | student fwd ms | student bwd ms | optimizer ms "
        "| peak GiB | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['step_ms']:.0f} | {r['tokens_per_s']:.0f} | {r['teacher_ms']:.0f} | "
                     f"{r['student_fwd_ms']:.0f} | {r['student_bwd_ms']:.0f} | {r['optim_ms']:.0f} | "
                     f"{r['peak_gib']:.2f} | {r['loss']:.3g} |")
    by_mode = {r["mode"]: r for r in rows if "error" not in r}
    lines.append("")
    if "sparse" in by_mode and "dense" in by_mode:
        ratio = by_mode["dense"]["step_ms"] / by_mode["sparse"]["step_ms"]
        s, d = by_mode["sparse"], by_mode["dense"]
        student_ratio = (d["student_fwd_ms"] + d["student_bwd_ms"]) / (s["student_fwd_ms"] + s["student_bwd_ms"])
        lines.append(f"- step speedup sparse vs dense student: **{ratio:.2f}x** (target ≥ {TARGET_RATIO}x: "
                     f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); student forward+backward alone "
                     f"{student_ratio:.2f}x")
    lines.append(f"- `sparge-train plan` for this run: {plan[0]:.1f} GiB per GPU ({plan[1]:.1f} GiB without its "
                 "2 GiB runtime reserve; peak GiB above is torch.cuda.max_memory_allocated)")
    lines.append("- step ms = wall time of the whole step (data, both models, backward, optimizer), "
                 "with the phase times synchronised by CUDA events")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-1.3b")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default="sparse,dense")
    parser.add_argument("--topk", type=float, default=0.05)
    parser.add_argument("--topp", type=float, default=0.0)
    parser.add_argument("--backend", default="_native_cudnn", help="diffusers attention backend for dense attention")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per mode")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--losses-out", type=Path, default=None,
                        help="keep each mode's metrics.jsonl here as <mode>.metrics.jsonl")
    parser.add_argument("--compare-losses", type=Path, nargs=2, default=None, metavar=("A", "B"),
                        help="only compare the loss curves of two kept metrics.jsonl files (no run)")
    args = parser.parse_args()
    if args.compare_losses:
        print(compare_losses(*args.compare_losses))
        return 0
    from sparge_kernels.options import BACKWARD_PATHS, DQ_ACCUMULATE

    choices = BACKWARD_PATHS + DQ_ACCUMULATE
    for mode in args.modes.split(","):
        if mode not in ("sparse", "dense") and mode.removeprefix("sparse-") not in choices:
            parser.error(f"--modes: {mode!r} is not sparse, dense or sparse-<{'|'.join(choices)}>")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        print(f"== {mode}", flush=True)
        row = run_mode(args, mode, workdir)
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = format_table(args, rows, planned_gib(args))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
