"""Command line: `sparge-train fit | prepare | plan` (also `python -m sparge_train ...`).

Launch fit with any of:
    python -m sparge_train fit --config run.yaml                       # one process
    torchrun --nproc_per_node 8 -m sparge_train fit --config run.yaml
    deepspeed --num_gpus 8 --module sparge_train fit --config run.yaml
    deepspeed --hostfile hostfile --module sparge_train fit --config run.yaml   # multi-node
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sparge_pipelines.cli_types import frames_4k_plus_1 as _frames
from sparge_pipelines.cli_types import int_at_least as _int_at_least
from sparge_pipelines.cli_types import multiple_of_16 as _multiple_of_16
from sparge_pipelines.cli_types import positive_float as _positive_float

from .config import ConfigError

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2  # bad arguments or configuration (argparse's code)
EXIT_STOPPED = 3  # the run stopped: diverged (non-finite loss/gradients) or no usable checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparge-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # The deepspeed launcher passes --local_rank=N (before or after the subcommand); LOCAL_RANK is used instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="velocity-distillation fine-tuning (DeepSpeed ZeRO)")
    fit.add_argument("--config", required=True, type=Path, help="run YAML (see examples/run.yaml)")
    fit.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override a config field (YAML value); repeatable")
    fit.add_argument("--local_rank", "--local-rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    prep = sub.add_parser("prepare", help="encode videos + captions into latent shards (Wan VAE + UMT5)")
    prep.add_argument("--videos", required=True, type=Path, help="folder of videos (searched recursively)")
    prep.add_argument("--captions", type=Path, default=None,
                      help=".jsonl {file, caption} / .csv (file,caption) / folder of <stem>.txt; "
                           "default: <video>.txt next to each video")
    prep.add_argument("--model", required=True, type=Path, help="Wan diffusers pipeline folder")
    prep.add_argument("--out", required=True, type=Path, help="empty output folder")
    prep.add_argument("--height", type=_multiple_of_16, default=480)
    prep.add_argument("--width", type=_multiple_of_16, default=832)
    prep.add_argument("--frames", type=_frames, default=81, help="4k+1 frames")
    prep.add_argument("--frame-stride", type=int, default=1)
    prep.add_argument("--max-text-len", type=int, default=512)
    prep.add_argument("--samples-per-shard", type=int, default=64)
    prep.add_argument("--device", default="auto")
    prep.add_argument("--sample-posterior", action="store_true", help="sample the VAE posterior (default: mean)")
    prep.add_argument("--seed", type=int, default=0)

    plan = sub.add_parser("plan", help="per-GPU memory plan for a distillation run")
    plan.add_argument("--model", default="wan2.1-14b", choices=_plan_models(), help="preset name")
    plan.add_argument("--gpus-per-node", type=_int_at_least(1), default=8)
    plan.add_argument("--nodes", type=_int_at_least(1), default=1)
    plan.add_argument("--zero", type=int, default=3, choices=(2, 3))
    plan.add_argument("--offload", choices=("none", "cpu"), default="none",
                      help="cpu: offload optimizer states (and, with ZeRO-3, parameters)")
    plan.add_argument("--height", type=_multiple_of_16, default=720)
    plan.add_argument("--width", type=_multiple_of_16, default=1280)
    plan.add_argument("--frames", type=_frames, default=81, help="4k+1 frames")
    plan.add_argument("--micro-batch", type=_int_at_least(1), default=1)
    plan.add_argument("--gpu-mem-gib", type=_positive_float, default=80.0)
    plan.add_argument("--sequence-parallel", type=_int_at_least(1), default=1, metavar="S",
                      help="Ulysses degree: S GPUs share one sample, seq/S tokens each (divides the GPUs and heads)")
    plan.add_argument("--no-gradient-checkpointing", action="store_true")
    plan.add_argument("--no-teacher", action="store_true", help="diffusion loss only (no teacher)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _plan_models() -> list[str]:
    from .presets import WAN_PRESETS  # no torch: --help stays fast

    return sorted(WAN_PRESETS)


def _cmd_fit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .distributed import shutdown_distributed
    from .trainer import fit

    cfg = load_config(args.config, args.overrides)
    try:
        result = fit(cfg)
    finally:
        shutdown_distributed()
    logging.getLogger("sparge_train").info("finished at step %d", result.final_step)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import PrepareOptions, prepare_shards

    index = prepare_shards(PrepareOptions(
        videos=args.videos, captions=args.captions, model=args.model, out=args.out, height=args.height,
        width=args.width, frames=args.frames, frame_stride=args.frame_stride, max_text_len=args.max_text_len,
        samples_per_shard=args.samples_per_shard, device=args.device, sample_posterior=args.sample_posterior,
        seed=args.seed))
    print(f"wrote {index}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from .plan import PlanRequest, format_plan, memory_plan

    try:
        request = PlanRequest(
        model=args.model, gpus_per_node=args.gpus_per_node, nodes=args.nodes, zero_stage=args.zero,
        offload=args.offload, height=args.height, width=args.width, frames=args.frames,
        micro_batch=args.micro_batch, gpu_mem_gib=args.gpu_mem_gib,
        gradient_checkpointing=not args.no_gradient_checkpointing, teacher=not args.no_teacher,
        sequence_parallel=args.sequence_parallel)
        request.validate()
    except ValueError as e:  # the request's own checks (argparse already covered the common ones)
        print(f"sparge-train plan: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    plan = memory_plan(request)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0 if plan.fits else 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return {"fit": _cmd_fit, "prepare": _cmd_prepare, "plan": _cmd_plan}[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError) as e:
        print(f"sparge-train {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        from .checkpoint import CheckpointError
        from .guards import TrainingStopped

        if isinstance(e, TrainingStopped | CheckpointError):
            print(f"sparge-train {args.command}: error: {e}", file=sys.stderr)
            return EXIT_STOPPED
        raise


if __name__ == "__main__":
    raise SystemExit(main())

