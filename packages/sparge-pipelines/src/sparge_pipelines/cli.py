"""`sparge-generate`: text-to-video (or image-to-video) with Wan2.1 and sparge self-attention, offline."""

# Only the standard library at import time: --help and argument errors answer in well under a second; torch and
# diffusers (seconds to import) load once the arguments are known to be good.
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .cli_types import finite_float as _finite_float
from .cli_types import fraction as _fraction
from .cli_types import frames_4k_plus_1 as _frames
from .cli_types import int_at_least as _int_at_least
from .cli_types import multiple_of_16 as _multiple_of_16
from .config import TOKEN_ORDERS, SpargeConfig  # standard library only: the defaults, without torch

__all__ = ["build_parser", "main", "DTYPE_NAMES", "VIDEO_SUFFIXES"]

DTYPE_NAMES = ("bf16", "fp16", "fp32")  # generate.DTYPES' keys
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")  # containers imageio-ffmpeg writes with libx264


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got {text!r}") from exc


def _video_path(text: str) -> str:
    suffix = Path(text).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} must end in one of {', '.join(VIDEO_SUFFIXES)} (the container "
                                         "is chosen from the extension)")
    return text


def _device(text: str) -> str:
    kind = text.split(":", 1)[0]
    if kind not in ("cpu", "cuda") or (kind == "cuda" and ":" in text and not text.split(":", 1)[1].isdigit()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _check_device(parser: argparse.ArgumentParser, device: str | None) -> None:
    """--device cuda needs a CUDA torch and a visible GPU (imports torch: only after the cheap checks)."""
    if device is None or not device.startswith("cuda"):
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = ""
    if torch_version.endswith("+cpu"):  # PyTorch's CPU wheels say so: answer without importing torch (seconds)
        parser.error(f"argument --device: {device!r} is not available: torch {torch_version} is a CPU build; "
                     "use --device cpu")
    import torch

    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if not torch.version.cuda else "no CUDA GPU is visible"
        parser.error(f"argument --device: {device!r} is not available: {why} (torch {torch.__version__}); "
                     "use --device cpu")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        parser.error(f"argument --device: {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _check_ulysses(parser: argparse.ArgumentParser, degree: int, model: str) -> None:
    """--ulysses-degree N needs N processes (torchrun sets WORLD_SIZE) and a head count N divides (read from the
    model's transformer/config.json when it is there); standard library only."""
    if degree == 1:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != degree:
        parser.error(f"argument --ulysses-degree: {degree} needs {degree} processes, one per GPU: launch with "
                     f"torchrun --nproc_per_node {degree} (WORLD_SIZE is {world})")
    config = Path(model) / "transformer" / "config.json"
    try:
        heads = json.loads(config.read_text()).get("num_attention_heads")
    except (OSError, ValueError):
        return  # no readable config: the loader reports the directory, the processor the heads
    if isinstance(heads, int) and heads % degree:
        parser.error(f"argument --ulysses-degree: Ulysses degree {degree} does not divide the {heads} attention "
                     f"heads of {model}: use a degree that divides {heads}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparge-generate", description=__doc__)
    p.add_argument("--model", required=True, help="local diffusers-format Wan2.1 directory (T2V or I2V)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--image", default=None, help="conditioning image (image-to-video models only)")
    p.add_argument("--frames", type=_frames, default=81, help="4k+1")
    p.add_argument("--height", type=_multiple_of_16, default=480)
    p.add_argument("--width", type=_multiple_of_16, default=832)
    p.add_argument("--steps", type=_int_at_least(1), default=50)
    p.add_argument("--guidance", type=_finite_float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=_fraction, default=SpargeConfig.topk)
    p.add_argument("--topp", type=_fraction, default=SpargeConfig.topp)
    p.add_argument("--dense", action="store_true", help="full attention everywhere (the baseline)")
    p.add_argument("--dense-steps", type=_int_at_least(0), default=SpargeConfig.dense_steps,
                   help="first N denoising steps run full attention")
    p.add_argument("--dense-layers", type=_layers, default=SpargeConfig.dense_layers,
                   help="comma-separated blocks kept dense")
    p.add_argument("--token-order", choices=TOKEN_ORDERS, default=SpargeConfig.token_order)
    p.add_argument("--block-q", type=_int_at_least(1), default=SpargeConfig.block_q)
    p.add_argument("--block-k", type=_int_at_least(1), default=SpargeConfig.block_k)
    p.add_argument("--stats", action="store_true", help="write density per step/layer/head (JSON + PNG heatmap)")
    p.add_argument("--time-attention", action="store_true",
                   help="measure the time in self-attention (CUDA events) for the report's attention share")
    p.add_argument("--out", type=_video_path, default="video.mp4", help=f"video file ({', '.join(VIDEO_SUFFIXES)})")
    p.add_argument("--report", default=None, help="JSON report path (default: --out with .json)")
    p.add_argument("--fps", type=_int_at_least(1), default=16)
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda or cuda:N; default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--ulysses-degree", type=_int_at_least(1), default=1,
                   help="sequence parallelism over N GPUs (diffusers' Ulysses context parallelism); run under "
                        "torchrun --nproc_per_node N; N must divide the attention heads")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Returns the exit code: 0, or 2 (argparse-style `sparge-generate: error: ...`) for bad arguments/inputs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never the network
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.dense and args.topk == 0.0 and args.topp == 0.0:
            parser.error("argument --topk/--topp: both 0: at least one selection rule must keep blocks")
        if args.image is not None and not Path(args.image).is_file():
            parser.error(f"argument --image: {args.image!r} is not a file")
        if args.report is not None and Path(args.report).suffix.lower() != ".json":
            parser.error(f"argument --report: {args.report!r} must end in .json")
        _check_ulysses(parser, args.ulysses_degree, args.model)
        _check_device(parser, args.device)
    except SystemExit as exc:  # argparse exits 2 on errors, 0 on --help: return it, so callers get an int
        return int(exc.code or 0)
    fields = {k: v for k, v in vars(args).items() if k != "no_progress"}
    try:
        from .generate import GenerateConfig, generate

        config = GenerateConfig(**fields, progress=not args.no_progress)
        report = generate(config)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, RuntimeError) as exc:
        print(f"sparge-generate: error: {exc}", file=sys.stderr)
        return 2
    if "video" not in report:  # a Ulysses rank other than 0: rank 0 writes and reports
        return 0
    line = f"wrote {report['video']} and {report['report']}: {report['total_s']:.1f} s total"
    if "attention_share" in report:
        line += f", attention share {report['attention_share']:.1%}"
    if "density" in report:
        line += f", density {report['density']['overall']:.3f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
