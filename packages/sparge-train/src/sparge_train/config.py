"""Run configuration: nested dataclasses loaded from YAML, validated with errors that name the field.

A run is fully described by one `RunConfig`; every component is built from its section (torchtitan style).
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sparge_pipelines.config import TRAINED_FIELDS, SpargeConfigError
from sparge_pipelines.config import SpargeConfig as PipelineSpargeConfig

__all__ = [
    "ConfigError",
    "ModelConfig",
    "SpargeConfig",
    "LossConfig",
    "FlowConfig",
    "SyntheticDataConfig",
    "WorldDataConfig",
    "DataConfig",
    "OptimConfig",
    "DeepSpeedSection",
    "ParallelSection",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted field name."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name


@dataclass
class ModelConfig:
    # A built-in architecture (see presets.py: wan2.1-1.3b, wan2.1-14b, tiny) initialised at random ...
    preset: str | None = None
    # ... or a diffusers checkpoint: a WanTransformer3DModel folder, or a pipeline folder with transformer/.
    pretrained: str | None = None
    # A diffusers folder the student starts from instead (e.g. an earlier distillation's export, to continue it
    # on a machine without its checkpoint); the teacher stays `pretrained`. A resumed checkpoint overrides both.
    student_init: str | None = None
    init_seed: int = 0
    gradient_checkpointing: bool = True
    # diffusers attention backend for the dense attention (teacher, cross-attention, a dense student), e.g.
    # "_native_cudnn" or "flash"; None keeps PyTorch's SDPA choice.
    attention_backend: str | None = None
    # diffusers' compile_repeated_blocks (regional torch.compile of the transformer blocks) on the student
    compile: bool = False

    def validate(self, prefix: str = "model") -> None:
        from .presets import WAN_PRESETS

        if (self.preset is None) == (self.pretrained is None):
            raise ConfigError(f"{prefix}.preset", "set exactly one of model.preset and model.pretrained")
        if self.preset is not None and self.preset not in WAN_PRESETS:
            raise ConfigError(f"{prefix}.preset", f"unknown preset {self.preset!r}; known: {sorted(WAN_PRESETS)}")
        if self.pretrained is not None and not Path(self.pretrained).is_dir():
            raise ConfigError(f"{prefix}.pretrained", f"{self.pretrained!r} is not a directory")
        if self.student_init is not None and not Path(self.student_init).is_dir():
            raise ConfigError(f"{prefix}.student_init", f"{self.student_init!r} is not a directory")


@dataclass
class SpargeConfig:
    """Sparse attention of the student: `enabled` (false: a dense student) plus the fields of
    `sparge_pipelines.SpargeConfig` that training sets — same names, defaults and validation (`pipeline_config()`
    builds it; `install_sparge` passes it to `apply_sparge`)."""

    enabled: bool = True
    topk: float = PipelineSpargeConfig.topk
    topp: float = PipelineSpargeConfig.topp
    dense_steps: int = PipelineSpargeConfig.dense_steps
    dense_layers: list[int] = field(default_factory=lambda: list(PipelineSpargeConfig.dense_layers))
    token_order: str = PipelineSpargeConfig.token_order

    def trained_mask(self) -> dict[str, Any]:
        """The mask fields a student trained under these settings is served with (its export's sparge.json)."""
        return {name: list(v) if isinstance(v := getattr(self, name), (list, tuple)) else v
                for name in TRAINED_FIELDS}

    def pipeline_config(self) -> PipelineSpargeConfig:
        """The pipelines' (validated) `SpargeConfig` of these fields."""
        return PipelineSpargeConfig(topk=self.topk, topp=self.topp, dense_steps=self.dense_steps,
                                    dense_layers=tuple(self.dense_layers), token_order=self.token_order)

    def validate(self, prefix: str = "sparge") -> None:
        try:
            self.pipeline_config()
        except SpargeConfigError as exc:
            # Both rules off is only wrong for a sparse student (it is checked last: every field is good here).
            disabled_and_off = not self.enabled and exc.field == "topk" and self.topk == 0.0 == self.topp
            if not disabled_and_off:
                raise ConfigError(f"{prefix}.{exc.field}", exc.reason) from None


@dataclass
class LossConfig:
    """velocity: ‖v_student − v_teacher‖²; diffusion: ‖v_student − (noise − x0)‖²; mix: weighted sum.

    guidance_scale w > 0 (velocity and mix): every sample also runs with the null caption, and the velocity term is
    the mean of the conditional one and ‖ṽ_student − ṽ_teacher‖² with ṽ = v(∅) + w·(v(c) − v(∅)), the guided
    velocity a CFG sampler steps with. The caption moves v by only a few percent of its norm, so the plain velocity
    loss barely sees what CFG amplifies w times (tools/results/world/student_guidance_error_cpu_2026-12-03.md).
    """

    kind: Literal["velocity", "diffusion", "mix"] = "velocity"
    velocity_weight: float = 1.0
    diffusion_weight: float = 1.0
    guidance_scale: float = 0.0

    def validate(self, prefix: str = "loss") -> None:
        if self.kind not in ("velocity", "diffusion", "mix"):
            raise ConfigError(f"{prefix}.kind", f"must be velocity, diffusion or mix, got {self.kind!r}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ConfigError(f"{prefix}.guidance_scale",
                              f"must be finite and >= 0 (0: off), got {self.guidance_scale}")
        if self.guidance_scale > 0 and not self.needs_teacher:
            raise ConfigError(f"{prefix}.guidance_scale", "distils the teacher's guided velocity: needs kind velocity "
                              "or mix with velocity_weight > 0")
        for name in ("velocity_weight", "diffusion_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{prefix}.{name}", f"must be finite and >= 0, got {value}")
        if self.kind == "mix" and self.velocity_weight == 0 and self.diffusion_weight == 0:
            raise ConfigError(f"{prefix}.velocity_weight", "mix with both weights 0 trains nothing")

    @property
    def needs_teacher(self) -> bool:
        return self.kind == "velocity" or (self.kind == "mix" and self.velocity_weight > 0)


@dataclass
class FlowConfig:
    """Wan's shifted flow matching: sigma' = shift·σ/(1+(shift−1)·σ), timestep = sigma'·num_train_timesteps."""

    shift: float = 5.0
    num_train_timesteps: int = 1000
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def validate(self, prefix: str = "flow") -> None:
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ConfigError(f"{prefix}.shift", f"must be > 0, got {self.shift}")
        if self.num_train_timesteps < 1:
            raise ConfigError(f"{prefix}.num_train_timesteps", f"must be >= 1, got {self.num_train_timesteps}")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(f"{prefix}.timestep_sampling", f"must be uniform or logit_normal, got "
                              f"{self.timestep_sampling!r}")
        if not self.logit_std > 0:
            raise ConfigError(f"{prefix}.logit_std", f"must be > 0, got {self.logit_std}")


@dataclass
class SyntheticDataConfig:
    """Random latents/text embeddings, deterministic per sample index (tests, benchmarks)."""

    num_samples: int = 64
    latent_channels: int = 16
    latent_frames: int = 21
    latent_height: int = 60
    latent_width: int = 104
    text_tokens: int = 32
    text_dim: int = 4096
    seed: int = 1234

    def validate(self, prefix: str = "data.synthetic") -> None:
        for f in dataclasses.fields(self):
            if f.name != "seed" and getattr(self, f.name) < 1:
                raise ConfigError(f"{prefix}.{f.name}", f"must be >= 1, got {getattr(self, f.name)}")


@dataclass
class WorldDataConfig:
    """The sparge world (sparge_pipelines.world): procedural captioned videos rendered on the training device.

    `sizes` lists (frames, height, width); optimizer step s trains on sizes[s % len(sizes)], so one model learns
    the full size and the reduced one the CPU demo uses. `caption_dropout` zeroes a sample's text (the null
    caption of classifier-free guidance), decided by the sample's stream position.
    """

    split: Literal["base", "shifted", "heldout"] = "base"
    seed: int = 0
    sizes: list[list[int]] = field(default_factory=lambda: [[16, 96, 96]])
    caption_dropout: float = 0.0

    def validate(self, prefix: str = "data.world") -> None:
        if self.split not in ("base", "shifted", "heldout"):
            raise ConfigError(f"{prefix}.split", f"must be base, shifted or heldout, got {self.split!r}")
        if not self.sizes:
            raise ConfigError(f"{prefix}.sizes", "needs at least one [frames, height, width]")
        for i, size in enumerate(self.sizes):
            if len(size) != 3 or min(size) < 1:
                raise ConfigError(f"{prefix}.sizes[{i}]", f"expected [frames, height, width] > 0, got {size}")
            if size[1] % 4 or size[2] % 4:
                raise ConfigError(f"{prefix}.sizes[{i}]", f"height and width must be multiples of the 4x4 patch, "
                                  f"got {size}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"{prefix}.caption_dropout", f"must be in [0, 1), got {self.caption_dropout}")


@dataclass
class DataConfig:
    source: Literal["shards", "synthetic", "world"] = "shards"
    path: str | None = None  # folder written by `sparge-train prepare` (has index.json)
    text_len: int = 512  # text embeddings are zero-padded to this length, as WanPipeline does
    shuffle: bool = True
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    world: WorldDataConfig = field(default_factory=WorldDataConfig)

    def validate(self, prefix: str = "data") -> None:
        if self.source not in ("shards", "synthetic", "world"):
            raise ConfigError(f"{prefix}.source", f"must be shards, synthetic or world, got {self.source!r}")
        if self.source == "shards":
            if self.path is None:
                raise ConfigError(f"{prefix}.path", "required when data.source is shards")
            if not (Path(self.path) / "index.json").is_file():
                raise ConfigError(f"{prefix}.path", f"{self.path!r} has no index.json (write it with "
                                  "`sparge-train prepare`)")
        if self.text_len < 1:
            raise ConfigError(f"{prefix}.text_len", f"must be >= 1, got {self.text_len}")
        self.synthetic.validate(f"{prefix}.synthetic")
        self.world.validate(f"{prefix}.world")


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables
    warmup_steps: int = 0

    def validate(self, prefix: str = "optim") -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{prefix}.lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{prefix}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{prefix}.betas", f"must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"{prefix}.eps", f"must be > 0, got {self.eps}")
        if self.grad_clip < 0:
            raise ConfigError(f"{prefix}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{prefix}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    offload_optimizer: Literal["none", "cpu"] = "none"
    offload_param: Literal["none", "cpu"] = "none"  # ZeRO-3 only
    shard_teacher: bool = True  # ZeRO-3: the frozen teacher is a sharded ZeRO-3 engine without optimizer
    reduce_bucket_size: int = 200_000_000
    allgather_bucket_size: int = 200_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_max_live_parameters: int = 1_000_000_000
    overlap_comm: bool = True

    def validate(self, prefix: str = "deepspeed") -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{prefix}.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"{prefix}.precision", f"must be auto, bf16 or fp32, got {self.precision!r}")
        for name in ("offload_optimizer", "offload_param"):
            if getattr(self, name) not in ("none", "cpu"):
                raise ConfigError(f"{prefix}.{name}", f"must be none or cpu, got {getattr(self, name)!r}")
        if self.offload_param == "cpu" and self.zero_stage != 3:
            raise ConfigError(f"{prefix}.offload_param", "parameter offload needs zero_stage 3")
        if self.offload_optimizer == "cpu" and self.zero_stage == 0:
            raise ConfigError(f"{prefix}.offload_optimizer", "optimizer offload needs zero_stage >= 1")
        for name in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                     "stage3_max_live_parameters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", f"must be >= 1, got {getattr(self, name)}")


@dataclass
class ParallelSection:
    """How the ranks share the work: data-parallel groups of `sequence_parallel_size` consecutive ranks, each group
    training on one sample split by tokens (Ulysses, see sequence_parallel.py). 1: plain data parallelism. The
    degree must divide the world size and the model's attention heads (checked at start-up and at config load)."""

    sequence_parallel_size: int = 1

    def validate(self, prefix: str = "parallel") -> None:
        if self.sequence_parallel_size < 1:
            raise ConfigError(f"{prefix}.sequence_parallel_size", f"must be >= 1, got {self.sequence_parallel_size}")

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel groups of `world_size` ranks; the error names the field."""
        if world_size % self.sequence_parallel_size:
            raise ConfigError("parallel.sequence_parallel_size", f"{self.sequence_parallel_size} does not divide the "
                              f"world size ({world_size}): the ranks form data-parallel groups of "
                              f"sequence_parallel_size ranks")
        return world_size // self.sequence_parallel_size


@dataclass
class TrainConfig:
    output_dir: str = "runs/sparge"
    max_steps: int = 1000
    micro_batch_size: int = 1
    # Samples per optimizer step over all ranks; None → micro_batch_size × world size (no accumulation).
    global_batch_size: int | None = None
    seed: int = 0
    log_every: int = 1
    save_every: int = 500  # 0: only at the end
    save_at_end: bool = True
    keep_last: int = 2
    # Consecutive steps with a non-finite loss or grad norm tolerated (no checkpoint after them) before the run
    # stops with exit code 3; 0 stops at the first. See guards.py.
    max_nonfinite_steps: int = 3
    resume: str = "auto"  # auto (latest in output_dir, if any) | none | <checkpoint dir>
    export_at_end: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    time_phases: bool = False  # log teacher forward / student forward / backward / optimizer ms (syncs the GPU)
    # Fixed-input evaluation every eval_every steps (and before the first): 0 disables.
    eval_every: int = 0
    eval_samples: int = 0  # the first eval_samples dataset samples, split round robin over ranks
    # Exponential moving average of the student's weights (fp32, ZeRO stage <= 2), exported instead of the raw
    # weights when enabled; 0 disables. Pretraining a model from scratch wants ~0.999.
    ema_decay: float = 0.0
    # Stop (saving a checkpoint) once a step ends after this many seconds of the loop; 0: no limit. Runs on lent
    # machines with a per-command limit resume from there.
    max_time_s: float = 0.0

    def validate(self, prefix: str = "train") -> None:
        if self.max_steps < 1:
            raise ConfigError(f"{prefix}.max_steps", f"must be >= 1, got {self.max_steps}")
        if self.micro_batch_size < 1:
            raise ConfigError(f"{prefix}.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ConfigError(f"{prefix}.global_batch_size", f"must be >= 1, got {self.global_batch_size}")
        if self.log_every < 1:
            raise ConfigError(f"{prefix}.log_every", f"must be >= 1, got {self.log_every}")
        if self.save_every < 0:
            raise ConfigError(f"{prefix}.save_every", f"must be >= 0, got {self.save_every}")
        if self.keep_last < 1:
            raise ConfigError(f"{prefix}.keep_last", f"must be >= 1, got {self.keep_last}")
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"{prefix}.max_nonfinite_steps", f"must be >= 0, got {self.max_nonfinite_steps}")
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            raise ConfigError(f"{prefix}.resume", f"must be auto, none or a checkpoint directory, got {self.resume!r}")
        if self.eval_every < 0:
            raise ConfigError(f"{prefix}.eval_every", f"must be >= 0, got {self.eval_every}")
        if self.eval_every > 0 and self.eval_samples < 1:
            raise ConfigError(f"{prefix}.eval_samples", "must be >= 1 when train.eval_every > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{prefix}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.max_time_s) and self.max_time_s >= 0):
            raise ConfigError(f"{prefix}.max_time_s", f"must be >= 0, got {self.max_time_s}")

    def batch_layout(self, data_parallel_size: int) -> tuple[int, int]:
        """(global batch, gradient accumulation steps) for `data_parallel_size` data-parallel ranks (the world size
        without sequence parallelism; the ranks of a sequence-parallel group share their samples); errors name
        the field."""
        per_pass = self.micro_batch_size * data_parallel_size
        global_batch = per_pass if self.global_batch_size is None else self.global_batch_size
        if global_batch % per_pass != 0:
            raise ConfigError("train.global_batch_size", f"{global_batch} is not a multiple of micro_batch_size "
                              f"({self.micro_batch_size}) × data-parallel size ({data_parallel_size})")
        return global_batch, global_batch // per_pass


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sparge: SpargeConfig = field(default_factory=SpargeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        if self.data.source == "synthetic" and self.train.eval_samples > self.data.synthetic.num_samples:
            raise ConfigError("train.eval_samples", f"{self.train.eval_samples} > data.synthetic.num_samples "
                              f"({self.data.synthetic.num_samples})")
        if self.loss.guidance_scale > 0 and self.data.source != "world":
            # Wan's null caption is the text encoder's output for "", which precomputed shards do not hold.
            raise ConfigError("loss.guidance_scale", f"needs the null caption's embedding: only data.source world "
                              f"defines it (zero tokens), got {self.data.source!r}")
        if self.train.ema_decay > 0 and self.deepspeed.zero_stage == 3:
            raise ConfigError("train.ema_decay", "EMA needs whole parameters on every rank: zero_stage <= 2")
        from .preflight import check_model_fields

        check_model_fields(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# dict/YAML → dataclasses, with type checks that name the field


def _type_error(name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(name, f"expected {expected}, got {type(value).__name__} {value!r}")


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _type_error(name, "a value", value)
        non_none = [a for a in args if a is not type(None)]
        return _coerce(name, non_none[0], value)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(name, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise _type_error(name, "a list", value)
        return [_coerce(f"{name}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(name, "a mapping", value)
        return _build(tp, value, name)
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(name, "true/false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _type_error(name, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _type_error(name, "a number", value) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(name, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(name, "a string", value)
        return value
    raise TypeError(f"unsupported config field type {tp!r} for {name}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}", f"unknown field; known fields: {sorted(known)}")
    kwargs = {k: _coerce(f"{prefix}.{k}" if prefix else k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a plain dict (as read from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"expected a mapping, got {type(data).__name__}")
    return _build(RunConfig, data, "").validate()


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(key, f"{p} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(key.strip(), f"--set value {raw!r} is not valid YAML ({_yaml_problem(exc)})") from None
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run file (safe_load: no arbitrary objects), apply overrides, validate."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"YAML syntax error at {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"{path} must contain a mapping")
    return config_from_dict(apply_overrides(data, overrides or []))
