"""Generate one video with sparge (or dense) self-attention and report time, attention share and density."""

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
from .config import SpargeConfig
from .timing import Timer

__all__ = ["GenerateConfig", "StepClock", "generate", "run_pipeline", "write_mp4"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")  # containers imageio-ffmpeg writes with libx264 (cli.py has a copy)


@dataclass
class GenerateConfig:
    """One `sparge-generate` run. Paths: `report` defaults to `out` with .json; stats go next to it."""

    model: str
    prompt: str
    negative_prompt: str | None = None
    image: str | None = None
    frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 50
    guidance: float = 5.0
    seed: int = 0
    # The SpargeConfig fields (defaults from it), `stats` for collect_stats; `dense`: every layer dense.
    topk: float = SpargeConfig.topk
    topp: float = SpargeConfig.topp
    dense: bool = False
    dense_steps: int = SpargeConfig.dense_steps
    dense_layers: tuple[int, ...] = SpargeConfig.dense_layers
    token_order: str = SpargeConfig.token_order
    block_q: int = SpargeConfig.block_q
    block_k: int = SpargeConfig.block_k
    stats: bool = False
    time_attention: bool = False
    out: str = "video.mp4"
    report: str | None = None
    fps: int = 16
    device: str | None = None
    dtype: str | None = None
    ulysses_degree: int = 1  # > 1: sequence parallelism over that many processes (torchrun), rank 0 writes
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "steps", "fps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4k+1 (Wan's VAE compresses time by 4), got {self.frames}")
        for name in ("height", "width"):
            if getattr(self, name) % 16:
                raise ValueError(f"{name} must be a multiple of 16, got {getattr(self, name)}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite float, got {self.guidance!r}")
        if Path(self.out).suffix.lower() not in VIDEO_SUFFIXES:
            # Checked before the (long) generation: writing is the last step.
            raise ValueError(f"out {self.out!r} must end in one of {', '.join(VIDEO_SUFFIXES)}")
        if isinstance(self.ulysses_degree, bool) or not isinstance(self.ulysses_degree, int) \
                or self.ulysses_degree < 1:
            raise ValueError(f"ulysses_degree must be an int >= 1, got {self.ulysses_degree!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        self.sparge_config()  # validates topk, topp, dense_steps, dense_layers, token_order, block sizes

    def sparge_config(self) -> SpargeConfig:
        return SpargeConfig(topk=self.topk, topp=self.topp, dense_steps=self.dense_steps,
                            dense_layers=self.dense_layers, token_order=self.token_order,
                            collect_stats=self.stats, time_attention=self.time_attention,
                            block_q=self.block_q, block_k=self.block_k)

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

    def step_end_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.timer.lap(step)
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


def write_mp4(frames: Any, path: str | Path, fps: int) -> Path:
    import imageio
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = (np.clip(np.asarray(frames), 0.0, 1.0) * 255).round().astype(np.uint8)
    imageio.mimwrite(path, list(video), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    return path


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


def generate(config: GenerateConfig, pipe: Any | None = None) -> dict:
    """Run `config` (loading the pipeline unless given), write the mp4, the JSON report and the stats."""
    from .loading import load_wan_pipeline

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, own_group = 0, False
    if config.ulysses_degree > 1:
        device, rank, own_group = _init_ulysses(config.ulysses_degree, device)
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch {torch.__version__} has no usable CUDA GPU "
                         f"({'a CPU build' if not torch.version.cuda else 'none visible'}); use device='cpu'")
    dtype = DTYPES[config.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
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

    # A dense run installs the processors with every layer dense only when it has something to measure.
    state = None
    num_layers = len(pipe.transformer.blocks)
    if not config.dense or config.stats or config.time_attention:
        sparge = config.sparge_config()
        if config.dense:
            sparge = dataclasses.replace(sparge, dense_layers=tuple(range(num_layers)))
        state = apply_sparge(pipe, sparge)
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

    out = write_mp4(frames[0], config.out, config.fps)
    step_s = clock.step_seconds
    report: dict[str, Any] = {
        "settings": {**asdict(config), "device": device, "dtype": str(dtype).removeprefix("torch."),
                     "mode": "dense" if config.dense else "sparge"},
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
