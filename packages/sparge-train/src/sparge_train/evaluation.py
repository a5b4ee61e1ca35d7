"""Held-fixed evaluation: the loss on the same (x_t, t, text) every time, so its trend is free of the
per-step sampling noise (σ and ε change every training step and dominate the training-loss curve)."""

from __future__ import annotations

import torch

from .config import ConfigError, RunConfig
from .data.sampler import MicroBatch
from .distributed import all_reduce_mean
from .losses import distillation_objective
from .training_batch import make_training_batch

__all__ = ["Evaluator", "eval_micro_batches", "evaluate"]

EVAL_SEED_OFFSET = 0x5EED  # eval noise is drawn from its own stream, disjoint from the training seed's


def eval_micro_batches(cfg: RunConfig, *, world_size: int, rank: int) -> list[MicroBatch]:
    """This rank's share of the first `train.eval_samples` dataset samples (round robin), in micro-batches.
    Positions are the sample indices: the same noise every evaluation."""
    n = cfg.train.eval_samples
    mine = list(range(rank, n, world_size))
    b = cfg.train.micro_batch_size
    return [MicroBatch(indices=mine[i:i + b], positions=mine[i:i + b]) for i in range(0, len(mine), b)]


@torch.no_grad()
def evaluate(cfg: RunConfig, dataset, student, teacher, micro_batches: list[MicroBatch], device: torch.device,
             dtype: torch.dtype) -> dict[str, float]:
    """Mean loss (and parts) over all ranks' evaluation samples. Collective (ZeRO-3 forwards gather weights)."""
    sums: dict[str, float] = {}
    count = 0
    for micro in micro_batches:
        batch = make_training_batch(dataset, micro, cfg, device, dtype, seed=cfg.train.seed + EVAL_SEED_OFFSET)
        v_teacher = teacher(batch.x_t, batch.timesteps, batch.text) if teacher else None
        v_student = student(batch.x_t, batch.timesteps, batch.text, return_dict=False)[0]
        loss, parts = distillation_objective(cfg.loss, v_student, v_teacher, batch.target)
        n = len(micro.indices)
        for key, value in {"loss": loss, **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
        count += n
    keys = sorted(sums)
    means = all_reduce_mean(torch.tensor([sums[k] / count for k in keys], dtype=torch.float64)).tolist()
    return {f"eval_{k}": v for k, v in zip(keys, means, strict=True)}


class Evaluator:
    """The fixed-input evaluation and its cadence: `maybe_eval(step)` every `train.eval_every` steps (and at step
    0, before the first update); the losses go into `losses` (step → eval_loss) and the metrics log. Collective."""

    def __init__(self, cfg: RunConfig, dataset, engines, *, world_size: int, rank: int, device: torch.device,
                 dtype: torch.dtype, log, losses: dict[int, float] | None = None) -> None:
        """world_size, rank: data-parallel ones (the ranks of a sequence-parallel group evaluate the same
        samples)."""
        self.cfg, self.dataset, self.engines = cfg, dataset, engines
        self.device, self.dtype, self.log = device, dtype, log
        self.losses = losses if losses is not None else {}
        self.batches: list[MicroBatch] = []
        if cfg.train.eval_every > 0:
            if cfg.train.eval_samples % world_size:
                raise ConfigError("train.eval_samples", f"{cfg.train.eval_samples} is not a multiple of the "
                                  f"data-parallel size ({world_size}): every rank must run the same evaluation "
                                  f"forwards")
            self.batches = eval_micro_batches(cfg, world_size=world_size, rank=rank)

    def maybe_eval(self, step: int) -> dict[str, float] | None:
        if not self.batches or step % self.cfg.train.eval_every:
            return None
        metrics = evaluate(self.cfg, self.dataset, self.engines.student, self.engines.teacher, self.batches,
                           self.device, self.dtype)
        self.losses[step] = metrics["eval_loss"]
        self.log.log(step, metrics)
        return metrics
