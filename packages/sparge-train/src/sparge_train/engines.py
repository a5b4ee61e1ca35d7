"""DeepSpeed engines: the student (optimizer, ZeRO-2/3) and the teacher (ZeRO-3 inference engine or a plain
frozen module on the device)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .checkpoint import install_safe_checkpoint_engine
from .config import ConfigError, OptimConfig, RunConfig

__all__ = ["Engines", "build_optimizer", "warmup_schedule", "build_engines"]


@dataclass
class Engines:
    student: object  # deepspeed.DeepSpeedEngine
    teacher: Callable[..., torch.Tensor] | None  # (x_t, timesteps, text) → v_teacher, no grad
    teacher_module: torch.nn.Module | None


def build_optimizer(cfg: OptimConfig, params, device: torch.device) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=fused)


def warmup_schedule(warmup_steps: int) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]:
    """Linear warmup to the configured lr, then constant (fine-tuning from a trained teacher)."""

    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if warmup_steps == 0:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))

    return make


def _check_zero3_bucket(cfg: RunConfig, params: list[torch.nn.Parameter]) -> None:
    """ZeRO-3 with sequence parallel groups averages gradients right on its all-reduce path only
    (deepspeed_config.py), which it takes for buckets of at most reduce_bucket_size elements: a parameter larger
    than that would be reduced on the other path."""
    largest = max(getattr(p, "ds_numel", p.numel()) for p in params)
    if largest > cfg.deepspeed.reduce_bucket_size:
        raise ConfigError("deepspeed.reduce_bucket_size", f"{cfg.deepspeed.reduce_bucket_size} is smaller than the "
                          f"largest parameter ({largest} elements): with sequence parallelism and ZeRO-3 every "
                          "parameter must fit one gradient bucket")


def build_engines(cfg: RunConfig, student: torch.nn.Module, teacher: torch.nn.Module | None, *,
                  student_ds: dict, teacher_ds: dict | None, sharded_teacher: bool, device: torch.device,
                  dtype: torch.dtype, mpu: Any = None) -> Engines:
    """`mpu`: DeepSpeed's data x sequence groups under sequence parallelism (sequence_parallel.py), else None."""
    import deepspeed

    params = [p for p in student.parameters() if p.requires_grad]
    if mpu is not None and cfg.deepspeed.zero_stage == 3:
        _check_zero3_bucket(cfg, params)
    optimizer = None if "optimizer" in student_ds else build_optimizer(cfg.optim, params, device)
    student_engine, _, _, _ = deepspeed.initialize(
        model=student, model_parameters=params if optimizer is None else None, optimizer=optimizer,
        lr_scheduler=warmup_schedule(cfg.optim.warmup_steps), config=student_ds, mpu=mpu)
    install_safe_checkpoint_engine(student_engine)
    student_engine.train()

    if teacher is None:
        return Engines(student_engine, None, None)
    if sharded_teacher:
        teacher_engine, _, _, _ = deepspeed.initialize(model=teacher, config=teacher_ds, mpu=mpu)
        install_safe_checkpoint_engine(teacher_engine)
        teacher_engine.eval()
        run = teacher_engine
    else:
        teacher.to(device=device)
        if dtype != torch.float32:
            teacher.to(dtype=dtype)  # the student engine casts the same way (DeepSpeed bf16 = all 16-bit params)
        run = teacher

    @torch.no_grad()
    def teacher_velocity(x_t: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return run(x_t, timesteps, text, return_dict=False)[0]

    return Engines(student_engine, teacher_velocity, teacher)
