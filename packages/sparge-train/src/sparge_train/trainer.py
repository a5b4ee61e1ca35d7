"""`sparge-train fit`: velocity distillation of a sparse Wan student from its frozen full-attention teacher.

Reads top to bottom: world → configs → data → models → engines → resume → loop (micro-batches, log, save) →
export. Components live in their own modules; this file only wires them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .checkpoint import TrainerState, export_weights, find_resume_point, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig
from .data import DeterministicBatchSampler, build_dataset
from .deepspeed_config import resolve_dtype, student_ds_config, teacher_ds_config, uses_sharded_teacher
from .distributed import WorldInfo, all_reduce_mean, barrier, init_distributed, world_from_env
from .ema import EMA
from .engines import build_engines
from .evaluation import eval_micro_batches, evaluate
from .guards import NonFiniteGuard
from .losses import distillation_objective
from .metrics import MetricsLogger
from .models import build_student_teacher, install_sparge
from .preflight import architecture, check_data, check_resume, run_info
from .training_batch import make_training_batch

__all__ = ["FitResult", "fit", "distill_micro_step"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    start_step: int
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step (1-based, after the update) → mean loss
    eval_losses: dict[int, float] = field(default_factory=dict)  # step → fixed-input evaluation loss
    export_dir: Path | None = None
    stopped_early: bool = False  # train.max_time_s ran out before train.max_steps


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def _write_run_files(out: Path, cfg: RunConfig, student_ds: dict, teacher_ds: dict | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (out / "deepspeed_student.yaml").write_text(yaml.safe_dump(student_ds, sort_keys=False))
    if teacher_ds is not None:
        (out / "deepspeed_teacher.yaml").write_text(yaml.safe_dump(teacher_ds, sort_keys=False))


class PhaseTimer:
    """Milliseconds per phase of distill_micro_step, summed over a step's micro-batches (CUDA events on GPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object, object]] = []  # (phase, start, end)
        self._last = None

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._last = self._now()

    def mark(self, phase: str) -> None:
        now = self._now()
        self.marks.append((phase, self._last, now))
        self._last = now

    def totals_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for phase, start, end in self.marks:
            ms = start.elapsed_time(end) if self.cuda else (end - start) * 1e3
            out[phase] = out.get(phase, 0.0) + ms
        return out


def distill_micro_step(engines, batch, loss_cfg, mark=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch: teacher velocity (no grad), student velocity, loss, backward, engine step (DeepSpeed
    applies the update at the accumulation boundary). `mark(phase)` is called after each phase (timing hooks)."""
    mark = mark or (lambda phase: None)
    v_teacher = engines.teacher(batch.x_t, batch.timesteps, batch.text) if engines.teacher else None
    mark("teacher_forward")
    v_student = engines.student(batch.x_t, batch.timesteps, batch.text, return_dict=False)[0]
    loss, parts = distillation_objective(loss_cfg, v_student, v_teacher, batch.target)
    mark("student_forward")
    engines.student.backward(loss)
    mark("student_backward")
    engines.student.step()
    mark("optimizer_step")
    return loss, parts


def fit(cfg: RunConfig, world: WorldInfo | None = None) -> FitResult:
    # 1. world and configs
    world = world or world_from_env()
    init_distributed(world)
    _seed_everything(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    device, dtype = world.device, resolve_dtype(cfg, world.device)
    global_batch, grad_accum = cfg.train.batch_layout(world.world_size)
    sharded_teacher = uses_sharded_teacher(cfg)
    student_ds = student_ds_config(cfg, world_size=world.world_size, device=device)
    teacher_ds = teacher_ds_config(cfg, world_size=world.world_size, device=device) if sharded_teacher else None
    # A damaged or mismatched checkpoint is reported now (preflight.py), before anything is built or overwritten.
    resume_point = find_resume_point(cfg.train.resume, out / "checkpoints")
    check_resume(cfg, resume_point)
    if world.is_main:
        _write_run_files(out, cfg, student_ds, teacher_ds)

    # 2. data: every rank derives its micro-batches from (seed, step); nothing to communicate
    dataset = build_dataset(cfg.data)
    sampler = DeterministicBatchSampler(len(dataset), global_batch_size=global_batch,
                                        micro_batch_size=cfg.train.micro_batch_size, world_size=world.world_size,
                                        rank=world.rank, seed=cfg.train.seed, shuffle=cfg.data.shuffle)
    check_data(cfg, dataset, architecture(cfg.model))

    # 3. models: student (sparse, trainable) and teacher (dense, frozen) with the same weights
    models = build_student_teacher(cfg, student_ds=student_ds, teacher_ds=teacher_ds,
                                   sharded_teacher=sharded_teacher, rank=world.rank, dtype=dtype)
    if cfg.model.attention_backend:
        for model in (models.student, models.teacher):
            if model is not None:
                model.set_attention_backend(cfg.model.attention_backend)
    if cfg.model.gradient_checkpointing:
        models.student.enable_gradient_checkpointing()
    if cfg.sparge.enabled:
        install_sparge(models.student, cfg.sparge)
    if cfg.model.compile:
        models.student.compile_repeated_blocks(fullgraph=True, dynamic=False)  # one graph per video size

    # 4. engines
    engines = build_engines(cfg, models.student, models.teacher, student_ds=student_ds, teacher_ds=teacher_ds,
                            sharded_teacher=sharded_teacher, device=device, dtype=dtype)
    student = engines.student
    ema = EMA(student.module, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    # 5. resume: engine state (weights, optimizer, lr schedule) + trainer state (step, data position, RNG)
    state = TrainerState(global_batch_size=global_batch, world_size=world.world_size)
    ckpt_root = out / "checkpoints"
    if resume_point is not None:
        state = load_checkpoint(student, *resume_point, device=device)
        if state.global_batch_size != global_batch:
            raise ValueError(f"train.global_batch_size: the checkpoint was trained with global batch "
                             f"{state.global_batch_size}, this run uses {global_batch}")
        if state.samples_seen != state.step * global_batch:
            raise RuntimeError(f"checkpoint data position {state.samples_seen} != step {state.step} × {global_batch}")
        if ema is not None:
            ema.load(resume_point[0] / resume_point[1])
        log.info("resumed from %s/%s at step %d", *resume_point, state.step)

    # 6. the loop
    logger = MetricsLogger(out, enabled=world.is_main, tensorboard=cfg.train.tensorboard, resume_step=state.step)
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps, ckpt_root)
    result = FitResult(start_step=state.step, final_step=state.step)
    eval_batches = []
    if cfg.train.eval_every > 0:
        if cfg.train.eval_samples % world.world_size:
            raise ConfigError("train.eval_samples", f"{cfg.train.eval_samples} is not a multiple of the world size "
                              f"({world.world_size}): every rank must run the same evaluation forwards")
        eval_batches = eval_micro_batches(cfg, world_size=world.world_size, rank=world.rank)

    def run_eval(at_step: int) -> None:
        metrics = evaluate(cfg, dataset, student, engines.teacher, eval_batches, device, dtype)
        result.eval_losses[at_step] = metrics["eval_loss"]
        logger.log(at_step, metrics)

    if eval_batches and state.step == 0:
        run_eval(0)
    from tqdm import tqdm

    progress = tqdm(total=cfg.train.max_steps, initial=state.step, unit="step", dynamic_ncols=True,
                    disable=not (world.is_main and cfg.train.progress_bar))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loop_start = time.perf_counter()
    for step in range(state.step, cfg.train.max_steps):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        phases = PhaseTimer(device) if cfg.train.time_phases else None
        for micro in sampler.micro_batches(step):
            batch = make_training_batch(dataset, micro, cfg, device, dtype, size_index=step)
            if phases is not None:
                phases.start()
            loss, parts = distill_micro_step(engines, batch, cfg.loss, mark=phases.mark if phases else None)
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / grad_accum
            tokens += batch.tokens
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - t0
        if ema is not None:
            ema.update()
        state.step = step + 1
        state.samples_seen = state.step * global_batch

        keys = sorted(sums)
        means = all_reduce_mean(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
        metrics = dict(zip(keys, means, strict=True))
        result.losses[state.step] = metrics["loss"]
        result.final_step = state.step
        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            grad_norm = student.get_global_grad_norm()
            metrics.update({
                "lr": student.get_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "step_time_s": step_time,
                "tokens_per_s": tokens * world.world_size / step_time,
                "samples_seen": state.samples_seen,
            })
            if device.type == "cuda":
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            if phases is not None:
                metrics.update({f"{name}_ms": ms for name, ms in phases.totals_ms().items()})
            logger.log(state.step, metrics)
        norm = student.get_global_grad_norm()
        guard.check(state.step, metrics["loss"], None if norm is None else float(norm), student.module,
                    student.was_step_applied())  # raises TrainingStopped past train.max_nonfinite_steps
        if eval_batches and state.step % cfg.train.eval_every == 0:
            run_eval(state.step)
        progress.update(1)
        progress.set_postfix(loss=f"{metrics['loss']:.4g}")

        out_of_time = cfg.train.max_time_s > 0 and time.perf_counter() - loop_start >= cfg.train.max_time_s
        out_of_time = bool(all_reduce_mean(torch.tensor([float(out_of_time)], dtype=torch.float64)).item() > 0)
        is_last = state.step == cfg.train.max_steps
        save_due = cfg.train.save_every > 0 and state.step % cfg.train.save_every == 0
        if (save_due or ((is_last or out_of_time) and cfg.train.save_at_end)) and not guard.last_step_bad:
            state.capture_rng(device)
            save_checkpoint(student, ckpt_root, state, keep_last=cfg.train.keep_last, is_main=world.is_main,
                            run_info=run_info(cfg), extra=ema.save if ema is not None else None)
        if state.step == cfg.train.kill_after_step:
            # Simulated crash for resume tests: no cleanup, no atexit, like a node failure.
            barrier()
            logger.close()
            os.kill(os.getpid(), signal.SIGKILL)
        if out_of_time and not is_last:
            log.info("train.max_time_s (%.0f s) reached after step %d: stopping; rerun to resume",
                     cfg.train.max_time_s, state.step)
            result.stopped_early = True
            break
    progress.close()

    # 7. export the student's weights (diffusers folder, safetensors)
    if cfg.train.export_at_end:
        result.export_dir = export_weights(student, models.student, out / "export", zero3=models.zero3_student,
                                           is_main=world.is_main, weights=ema.state_dict() if ema else None)
    logger.close()
    barrier()
    return result
