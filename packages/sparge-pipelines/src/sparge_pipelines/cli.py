"""`sparge-generate`: text-to-video with sparge self-attention, offline: the shipped sparge world model by default
(captions of its fixed vocabulary), or a local Wan2.1 pipeline (text- or image-to-video) with --model DIR."""

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
from .model_source import VIDEO_SUFFIXES, ModelSource, resolve_model  # standard library only

__all__ = ["build_parser", "main", "DTYPE_NAMES", "VIDEO_SUFFIXES"]

DTYPE_NAMES = ("bf16", "fp16", "fp32")  # generate.DTYPES' keys
TRAINED_DEFAULT = "default: the model's trained mask (sparge.json beside a distilled student's weights), else"


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got {text!r}") from exc


def _check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace, source: ModelSource) -> None:
    """The rules that depend on the model: Wan-only options, the size rules, the --out containers."""
    sizes = ("frames", "height", "width")
    if source.kind == "world":
        for name, why in source.world_errors(vars(args)):
            parser.error(f"argument --{name.replace('_', '-')}: {why}")
    else:  # Wan: the rules these options had as argparse types before the world model came
        for name, check in zip(sizes, (_frames, _multiple_of_16, _multiple_of_16), strict=True):
            if getattr(args, name) is not None:
                try:
                    check(str(getattr(args, name)))
                except argparse.ArgumentTypeError as exc:
                    parser.error(f"argument --{name}: {exc}")
    if Path(args.out).suffix.lower() not in source.video_suffixes:
        parser.error(f"argument --out: {args.out!r} must end in one of {', '.join(source.video_suffixes)} (the "
                     "container is chosen from the extension)")


def _check_world_prompt(parser: argparse.ArgumentParser, prompt: str) -> None:
    """A world caption (imports torch with the world package: only after the cheap checks)."""
    from .world_generate import parse_prompt

    try:
        parse_prompt(prompt)
    except ValueError as exc:
        parser.error(f"argument --prompt: {exc}")


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
    p.add_argument("--model", default=None,
                   help="default: the shipped world teacher. world | world-teacher (the same), world-student (the "
                        "distilled sparse student, served with its trained mask), a folder with a world "
                        "WanTransformer3DModel (config.json), or a local diffusers-format Wan2.1 directory (T2V or "
                        "I2V, model_index.json)")
    p.add_argument("--prompt", required=True,
                   help="world model: a caption of its vocabulary, e.g. 'a red 3 moving left and a blue 7 moving up "
                        "on clouds'; Wan: any text")
    p.add_argument("--negative-prompt", default=None, help="Wan only")
    p.add_argument("--image", default=None, help="conditioning image (Wan image-to-video models only)")
    p.add_argument("--frames", type=_int_at_least(1), default=None,
                   help="world: default 16 on cuda, 8 on cpu; Wan: 4k+1, default 81")
    p.add_argument("--height", type=_int_at_least(1), default=None,
                   help="world: a multiple of 4, default 64; Wan: a multiple of 16, default 480")
    p.add_argument("--width", type=_int_at_least(1), default=None,
                   help="world: a multiple of 4, default 64; Wan: a multiple of 16, default 832")
    p.add_argument("--steps", type=_int_at_least(1), default=None, help="default: world 25, Wan 50")
    p.add_argument("--guidance", type=_finite_float, default=None, help="CFG scale; default: world 4.0, Wan 5.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=_fraction, default=None, help=f"{TRAINED_DEFAULT} {SpargeConfig.topk}")
    p.add_argument("--topp", type=_fraction, default=None, help=f"{TRAINED_DEFAULT} {SpargeConfig.topp}")
    p.add_argument("--dense", action="store_true", help="full attention everywhere (the baseline)")
    p.add_argument("--dense-steps", type=_int_at_least(0), default=SpargeConfig.dense_steps,
                   help="first N denoising steps run full attention")
    p.add_argument("--dense-layers", type=_layers, default=None,
                   help=f"comma-separated blocks kept dense; {TRAINED_DEFAULT} none")
    p.add_argument("--token-order", choices=TOKEN_ORDERS, default=None,
                   help=f"{TRAINED_DEFAULT} {SpargeConfig.token_order}")
    p.add_argument("--block-q", type=_int_at_least(1), default=SpargeConfig.block_q)
    p.add_argument("--block-k", type=_int_at_least(1), default=SpargeConfig.block_k)
    p.add_argument("--stats", action="store_true", help="write density per step/layer/head (JSON + PNG heatmap)")
    p.add_argument("--time-attention", action="store_true",
                   help="measure the time in self-attention (CUDA events) for the report's attention share")
    p.add_argument("--out", default="video.mp4",
                   help=f"video file ({', '.join(VIDEO_SUFFIXES)}; world model also .gif)")
    p.add_argument("--report", default=None, help="JSON report path (default: --out with .json)")
    p.add_argument("--fps", type=_int_at_least(1), default=None, help="default: world 8, Wan 16")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda or cuda:N; default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--ulysses-degree", type=_int_at_least(1), default=1,
                   help="Wan only: sequence parallelism over N GPUs (diffusers' Ulysses context parallelism); run "
                        "under torchrun --nproc_per_node N; N must divide the attention heads")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Returns the exit code: 0, or 2 (argparse-style `sparge-generate: error: ...`) for bad arguments/inputs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never the network
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        try:
            source = resolve_model(args.model)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))  # "--model ...: why", as the Wan loader's errors say it
        _check_model_args(parser, args, source)
        if not args.dense and args.topk == 0.0 and args.topp == 0.0:
            parser.error("argument --topk/--topp: both 0: at least one selection rule must keep blocks")
        if args.image is not None and not Path(args.image).is_file():
            parser.error(f"argument --image: {args.image!r} is not a file")
        if args.report is not None and Path(args.report).suffix.lower() != ".json":
            parser.error(f"argument --report: {args.report!r} must end in .json")
        if source.kind == "wan":
            _check_ulysses(parser, args.ulysses_degree, args.model)
        _check_device(parser, args.device)
        if source.kind == "world":
            _check_world_prompt(parser, args.prompt)
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
