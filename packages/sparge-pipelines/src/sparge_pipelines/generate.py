"""Generate one video with sparge (or dense) self-attention and report time, attention share and density.

The model is a Wan2.1 pipeline folder or the sparge world model (model_source.py says which `model` names); the
world model's run is world_generate.py, and both share the config, the clock, the video writer and the report here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .apply import apply_sparge, remove_sparge
from .config import TRAINED_FIELDS, SpargeConfig, trained_sparge_fields
from .model_source import ModelSource, resolve_model
from .state import SpargeState
from .timing import Timer

__all__ = ["GenerateConfig", "StepClock", "WAN_DEFAULTS", "generate", "run_pipeline", "write_mp4", "write_video"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# A Wan2.1 run's size, sampling and frame rate when not given (the world model's: world_generate.world_defaults).
WAN_DEFAULTS: dict[str, Any] = dict(frames=81, height=480, width=832, steps=50, guidance=5.0, fps=16)


@dataclass
class GenerateConfig:
    """One `sparge-generate` run. Paths: `report` defaults to `out` with .json; stats go next to it.

    `model`: None (the shipped world teacher), a world name or folder, or a Wan2.1 pipeline folder (model_source).
    Size, steps, guidance and fps left None take the model's defaults (`with_defaults`, called by `generate`).
    """

    model: str | None
    prompt: str
    negative_prompt: str | None = None
    image: str | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    # The SpargeConfig fields, `stats` for collect_stats; `dense`: every layer dense. The mask fields left None
    # take the model's trained mask (sparge.json beside a distilled student's weights), else SpargeConfig's.
    topk: float | None = None
    topp: float | None = None
    dense: bool = False
    dense_steps: int = SpargeConfig.dense_steps
    dense_layers: tuple[int, ...] | None = None
    token_order: str | None = None
    block_q: int = SpargeConfig.block_q
    block_k: int = SpargeConfig.block_k
    stats: bool = False
    time_attention: bool = False
    out: str = "video.mp4"
    report: str | None = None
    fps: int | None = None
    device: str | None = None
    dtype: str | None = None
    ulysses_degree: int = 1  # > 1: sequence parallelism over that many processes (torchrun), rank 0 writes
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = self.source  # resolving the model checks a shipped name is there
        for name in ("frames", "height", "width", "steps", "fps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if source.kind == "world":
            self._check_world(source)
        else:
            if self.frames is not None and (self.frames - 1) % 4:
                raise ValueError(f"frames must be 4k+1 (Wan's VAE compresses time by 4), got {self.frames}")
            for name in ("height", "width"):
                if getattr(self, name) is not None and getattr(self, name) % 16:
                    raise ValueError(f"{name} must be a multiple of 16, got {getattr(self, name)}")
        if self.guidance is not None and (not isinstance(self.guidance, (int, float))
                                          or not math.isfinite(self.guidance)):
            raise ValueError(f"guidance must be a finite float, got {self.guidance!r}")
        if Path(self.out).suffix.lower() not in source.video_suffixes:
            # Checked before the (long) generation: writing is the last step.
            raise ValueError(f"out {self.out!r} must end in one of {', '.join(source.video_suffixes)}")
        if isinstance(self.ulysses_degree, bool) or not isinstance(self.ulysses_degree, int) \
                or self.ulysses_degree < 1:
            raise ValueError(f"ulysses_degree must be an int >= 1, got {self.ulysses_degree!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        self.sparge_config()  # validates topk, topp, dense_steps, dense_layers, token_order, block sizes

    def _check_world(self, source: ModelSource) -> None:
        from .world_generate import parse_prompt

        for name, why in source.world_errors(asdict(self)):
            raise ValueError(f"{name}: {why}")
        try:
            parse_prompt(self.prompt)
        except ValueError as exc:
            raise ValueError(f"prompt: {exc}") from None

    @property
    def source(self) -> ModelSource:
        """The model `model` names (cheap: a few file reads, no loading)."""
        return resolve_model(self.model)

    def with_defaults(self, device: str) -> GenerateConfig:
        """This config with every size/sampling/fps field left None set to the model's default on `device`."""
        if self.source.kind == "world":
            from .world_generate import world_defaults

            defaults = world_defaults(device)
        else:
            defaults = WAN_DEFAULTS
        defaults = {**defaults, **self._mask_defaults()}
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def _mask_defaults(self) -> dict[str, Any]:
        """The mask fields a run leaves unset: the model's trained mask, else SpargeConfig's defaults."""
        trained = trained_sparge_fields(self.source.path)
        return {name: trained.get(name, getattr(SpargeConfig, name)) for name in TRAINED_FIELDS}

    def sparge_config(self) -> SpargeConfig:
        mask = {name: v for name in TRAINED_FIELDS if (v := getattr(self, name)) is not None}
        if len(mask) < len(TRAINED_FIELDS):  # the model's sparge.json is read once, only when something is unset
            mask = {**self._mask_defaults(), **mask}
        return SpargeConfig(**mask, dense_steps=self.dense_steps, collect_stats=self.stats,
                            time_attention=self.time_attention, block_q=self.block_q, block_k=self.block_k)

    @property
    def report_path(self) -> Path:
        return Path(self.report) if self.report else Path(self.out).with_suffix(".json")


class StepClock:
    """Time of each denoising step on a `Timer` (CUDA events or perf_counter): from the first transformer call
    (the loop start) to each step's end callback, then step to step."""

    def __init__(self, device: torch.device) -> None:
        self.timer = Timer(device)
        self._started = False

    def loop_start_hook(self, module, args, kwargs) -> None:
        if not self._started:
            self._started = True
            self.timer.start()

    def end_step(self, step: int) -> None:
        self.timer.lap(step)

    def step_end_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """A diffusers pipeline's `callback_on_step_end`."""
        self.end_step(step)
        return {}

    @property
    def step_seconds(self) -> list[float]:
        return [ms / 1e3 for _, ms in self.timer.intervals_ms()]


def run_pipeline(pipe: Any, config: GenerateConfig, clock: StepClock | None = None) -> Any:
    """The video as float numpy (B, F, H, W, 3) in [0, 1]."""
    kwargs = dict(prompt=config.prompt, negative_prompt=config.negative_prompt, num_frames=config.frames,
                  height=config.height, width=config.width, num_inference_steps=config.steps,
                  guidance_scale=config.guidance, generator=torch.Generator("cpu").manual_seed(config.seed),
                  output_type="np")
    if config.image is not None:
        from diffusers.utils import load_image

        kwargs["image"] = load_image(config.image)
    hooks = []
    if clock is not None:
        kwargs["callback_on_step_end"] = clock.step_end_callback
        for name in ("transformer", "transformer_2"):
            model = getattr(pipe, name, None)
            if model is not None:
                hooks.append(model.register_forward_pre_hook(clock.loop_start_hook, with_kwargs=True))
    try:
        return pipe(**kwargs).frames
    finally:
        for h in hooks:
            h.remove()


def write_video(frames: Any, path: str | Path, fps: int) -> Path:
    """Float frames (F, H, W, 3) in [0, 1] as H.264 (.mp4/.mkv/.mov) or, by the extension, a looping GIF."""
    import imageio
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = (np.clip(np.asarray(frames), 0.0, 1.0) * 255).round().astype(np.uint8)
    if path.suffix.lower() == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, video, extension=".gif", duration=1000 / fps, loop=0)  # pillow: ms per frame
    else:
        imageio.mimwrite(path, list(video), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    return path


write_mp4 = write_video  # its name before GIF output


def _init_ulysses(degree: int, device: str) -> tuple[str, int, bool]:
    """(this rank's device, rank, whether the process group was created here) for a torchrun launch of
    `degree` processes: NCCL and cuda:LOCAL_RANK on GPUs, gloo on the CPU."""
    import os

    dist = torch.distributed
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.get_world_size() != degree:
        raise ValueError(f"ulysses_degree {degree} needs {degree} processes, got a world of {dist.get_world_size()}")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', dist.get_rank()))}"
        torch.cuda.set_device(device)
    return device, dist.get_rank(), own_group


def resolve_device(device: str | None) -> str:
    """`device`, or cuda when available, else cpu; a clear error for a CUDA device this torch cannot use."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch {torch.__version__} has no usable CUDA GPU "
                         f"({'a CPU build' if not torch.version.cuda else 'none visible'}); use device='cpu'")
    return device


def compute_dtype(config: GenerateConfig, device: str) -> torch.dtype:
    return DTYPES[config.dtype or ("bf16" if device.startswith("cuda") else "fp32")]


def install_sparge(target: Any, config: GenerateConfig, num_layers: int) -> SpargeState | None:
    """`config`'s sparge attention on a pipeline or transformer of `num_layers` blocks. A dense run installs the
    processors (every layer dense) only when it has something to measure: stats or attention time."""
    if config.dense and not (config.stats or config.time_attention):
        return None
    sparge = config.sparge_config()
    if config.dense:
        sparge = dataclasses.replace(sparge, dense_layers=tuple(range(num_layers)))
    return apply_sparge(target, sparge)


def write_outputs(config: GenerateConfig, frames: Any, *, device: str, dtype: torch.dtype, state: SpargeState | None,
                  clock: StepClock, load_s: float, total_s: float, settings: dict[str, Any] | None = None) -> dict:
    """Write the video (frames (F, H, W, 3) in [0, 1]), the stats and the JSON report; returns the report with the
    path of its file under "report". `settings`: model-specific entries for the report's settings."""
    out = write_video(frames, config.out, config.fps)
    step_s = clock.step_seconds
    report: dict[str, Any] = {
        "settings": {**asdict(config), "device": device, "dtype": str(dtype).removeprefix("torch."),
                     "mode": "dense" if config.dense else "sparge", **(settings or {})},
        "video": str(out),
        "load_s": load_s,
        "total_s": total_s,
        "denoise_s": sum(step_s),
        "per_step_s": step_s,
    }
    if state is not None and state.timer is not None:
        attn_ms = state.timer.totals()
        per_step = [attn_ms.get(i, 0.0) / 1e3 for i in range(len(step_s))]
        report["attention_s_per_step"] = per_step
        report["attention_share"] = sum(per_step) / max(sum(step_s), 1e-12)
    if state is not None and state.stats is not None:
        summary = state.stats.summary()
        base = config.report_path.with_suffix("")
        report["density"] = {"overall": summary["overall"], "per_step": summary["mean_per_step"],
                             "json": str(state.stats.save_json(f"{base}.density.json", summary)),
                             "heatmap": str(state.stats.save_heatmap(f"{base}.density.png", summary))}
    path = config.report_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    report["report"] = str(path)
    return report


def generate(config: GenerateConfig, pipe: Any | None = None) -> dict:
    """Run `config` (loading the model unless a Wan `pipe` is given), write the video, the JSON report and the
    stats. Returns the report (with its path under "report"); a Ulysses rank other than 0 returns only its time."""
    if pipe is None and config.source.kind == "world":
        from .world_generate import generate_world

        return generate_world(config)
    from .loading import load_wan_pipeline

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, own_group = 0, False
    if config.ulysses_degree > 1:
        device, rank, own_group = _init_ulysses(config.ulysses_degree, device)
    device = resolve_device(device)
    config = config.with_defaults(device)
    dtype = compute_dtype(config, device)
    t_load = time.perf_counter()
    if pipe is None:
        pipe = load_wan_pipeline(config.model, device=device, dtype=dtype)
    if config.ulysses_degree > 1:
        from diffusers import ContextParallelConfig

        from .parallel import enable_context_parallel

        enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=config.ulysses_degree))
    load_s = time.perf_counter() - t_load
    pipe.set_progress_bar_config(disable=not config.progress, desc="denoising")
    if config.image is None and type(pipe).__name__ == "WanImageToVideoPipeline":
        raise ValueError("image: the model is an image-to-video pipeline, pass --image")

    state = install_sparge(pipe, config, len(pipe.transformer.blocks))
    clock = StepClock(torch.device(device))
    try:
        t0 = time.perf_counter()
        frames = run_pipeline(pipe, config, clock)
        total_s = time.perf_counter() - t0
    finally:
        if state is not None:
            remove_sparge(pipe)
        if own_group:
            torch.distributed.destroy_process_group()
    if rank != 0:  # every rank holds the same video; rank 0 writes it
        return {"rank": rank, "total_s": total_s}
    return write_outputs(config, frames[0], device=device, dtype=dtype, state=state, clock=clock, load_s=load_s,
                         total_s=total_s)
