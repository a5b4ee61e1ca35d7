"""DeepSpeed JSON configs for the student (trained) and the teacher (frozen, ZeRO-3 sharded inference)."""

from __future__ import annotations

from typing import Any

import torch

from .config import RunConfig

__all__ = ["resolve_dtype", "student_ds_config", "teacher_ds_config", "uses_sharded_teacher"]


def resolve_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU unless deepspeed.precision says otherwise."""
    precision = cfg.deepspeed.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def uses_sharded_teacher(cfg: RunConfig) -> bool:
    return cfg.loss.needs_teacher and cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.shard_teacher


def _zero_section(cfg: RunConfig, *, trainable: bool) -> dict[str, Any]:
    ds = cfg.deepspeed
    stage = ds.zero_stage if trainable else 3
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update({
            "overlap_comm": ds.overlap_comm,
            "contiguous_gradients": True,
            # ZeRO-3's reduce-scatter path divides the summed gradients by the world size even with sequence
            # parallel groups (DeepSpeed 0.19.8); its all-reduce path divides by the data-parallel size, as
            # ZeRO-1/2 do: see sequence_parallel.py.
            "reduce_scatter": not (stage == 3 and cfg.parallel.sequence_parallel_size > 1),
            "reduce_bucket_size": ds.reduce_bucket_size,
        })
    if stage in (1, 2):
        zero["allgather_bucket_size"] = ds.allgather_bucket_size
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": ds.stage3_prefetch_bucket_size,
            "stage3_max_live_parameters": ds.stage3_max_live_parameters,
            "stage3_param_persistence_threshold": 10_000,
            # Exporting weights gathers the 16-bit params on rank 0.
            "stage3_gather_16bit_weights_on_model_save": trainable,
        })
        if ds.offload_param == "cpu":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if trainable and ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return zero


def student_ds_config(cfg: RunConfig, *, data_parallel_size: int, device: torch.device) -> dict[str, Any]:
    """Config for deepspeed.initialize of the trained student; `data_parallel_size`: the world size without
    sequence parallelism (DeepSpeed's batch sizes count data-parallel ranks).

    With optimizer offload the optimizer is DeepSpeed's CPU Adam (declared here); otherwise the trainer passes a
    torch AdamW (fused on GPU) and this config allows it.
    """
    global_batch, grad_accum = cfg.train.batch_layout(data_parallel_size)
    dtype = resolve_dtype(cfg, device)
    out: dict[str, Any] = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": False},
        "zero_optimization": _zero_section(cfg, trainable=True),
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the trainer logs
        "wall_clock_breakdown": False,
        "seed": cfg.train.seed,
    }
    if cfg.deepspeed.offload_optimizer == "cpu":
        o = cfg.optim
        out["optimizer"] = {"type": "AdamW", "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                                          "weight_decay": o.weight_decay}}
    return out


def teacher_ds_config(cfg: RunConfig, *, data_parallel_size: int, device: torch.device) -> dict[str, Any]:
    """ZeRO-3 engine without optimizer: parameters sharded over ranks, gathered layer by layer in forward."""
    global_batch, grad_accum = cfg.train.batch_layout(data_parallel_size)
    dtype = resolve_dtype(cfg, device)
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": False},
        "zero_optimization": _zero_section(cfg, trainable=False),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
