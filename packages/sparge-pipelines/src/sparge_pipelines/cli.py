"""`sparge-generate`: text-to-video (or image-to-video) with Wan2.1 and sparge self-attention, offline."""

from __future__ import annotations

import argparse
import os
import sys

from .generate import DTYPES, GenerateConfig

__all__ = ["build_parser", "main"]


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparge-generate", description=__doc__)
    p.add_argument("--model", required=True, help="local diffusers-format Wan2.1 directory (T2V or I2V)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--image", default=None, help="conditioning image (image-to-video models only)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=float, default=0.03)
    p.add_argument("--topp", type=float, default=0.2)
    p.add_argument("--dense", action="store_true", help="full attention everywhere (the baseline)")
    p.add_argument("--dense-steps", type=int, default=0, help="first N denoising steps run full attention")
    p.add_argument("--dense-layers", type=_layers, default=(), help="comma-separated blocks kept dense")
    p.add_argument("--token-order", choices=("1d", "tiled"), default="1d")
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-k", type=int, default=64)
    p.add_argument("--stats", action="store_true", help="write density per step/layer/head (JSON + PNG heatmap)")
    p.add_argument("--time-attention", action="store_true",
                   help="measure the time in self-attention (CUDA events) for the report's attention share")
    p.add_argument("--out", default="video.mp4")
    p.add_argument("--report", default=None, help="JSON report path (default: --out with .json)")
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never the network
    args = build_parser().parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k != "no_progress"}
    try:
        config = GenerateConfig(**fields, progress=not args.no_progress)
        from .generate import generate

        report = generate(config)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, RuntimeError) as exc:
        print(f"sparge-generate: error: {exc}", file=sys.stderr)
        return 2
    line = f"wrote {report['video']} and {report['report']}: {report['total_s']:.1f} s total"
    if "attention_share" in report:
        line += f", attention share {report['attention_share']:.1%}"
    if "density" in report:
        line += f", density {report['density']['overall']:.3f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
