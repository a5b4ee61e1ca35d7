"""`sparge-train fit`: velocity distillation of a sparse Wan student from its frozen full-attention teacher.

Reads top to bottom: world → configs → data → models → engines → resume → loop → export. Components live in their
own modules and own their cadence (`Checkpointer.maybe_save`, `Evaluator.maybe_eval`, `TrainLog.log`,
`NonFiniteGuard.check`, `TimeBudget.exhausted`); this file only wires them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from sparge_pipelines.timing import Timer

from .checkpoint import Checkpointer, TrainerState, export_weights, find_resume_point
from .config import RunConfig
from .data import DeterministicBatchSampler, build_dataset
from .deepspeed_config import resolve_dtype, student_ds_config, teacher_ds_config, uses_sharded_teacher
from .distributed import WorldInfo, all_reduce_mean, barrier, init_distributed, world_from_env
from .ema import EMA
from .engines import build_engines
from .evaluation import Evaluator
from .guards import NonFiniteGuard, TimeBudget
from .losses import distillation_objective
from .metrics import MetricsLogger, TrainLog
from .models import build_student_teacher, install_sparge
from .prefetch import StepPrefetcher
from .preflight import architecture, check_data, check_resume, run_info
from .sequence_parallel import ParallelLayout, SequenceParallel, init_sequence_parallel
from .training_batch import TrainingBatch, make_training_batch

__all__ = ["FitResult", "StepOutput", "fit", "distill_micro_step", "step_batches", "train_step"]

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


@dataclass
class StepOutput:
    sums: dict[str, float]  # this rank's loss and loss parts, averaged over its micro-batches
    tokens: int  # this rank's tokens
    seconds: float  # wall time of the step (the device synchronised)
    phases: Timer | None  # phase times (train.time_phases)

    def mean_over_ranks(self) -> dict[str, float]:
        keys = sorted(self.sums)
        means = all_reduce_mean(torch.tensor([self.sums[k] for k in keys], dtype=torch.float64)).tolist()
        return dict(zip(keys, means, strict=True))


def step_batches(cfg: RunConfig, sampler, dataset, step: int, device: torch.device,
                 dtype: torch.dtype) -> list[TrainingBatch]:
    """This rank's micro-batches of optimizer step `step` (0-based), ready for the models."""
    return [make_training_batch(dataset, micro, cfg, device, dtype, size_index=step)
            for micro in sampler.micro_batches(step)]


def train_step(cfg: RunConfig, engines, batches: list[TrainingBatch], device: torch.device,
               grad_accum: int) -> StepOutput:
    """One optimizer step: every micro-batch of this rank, the update at the accumulation boundary."""
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    tokens = 0
    phases = Timer(device) if cfg.train.time_phases else None
    for batch in batches:
        if phases is not None:
            phases.start()
        loss, parts = distill_micro_step(engines, batch, cfg.loss, mark=phases.lap if phases else None)
        for key, value in {"loss": loss.detach(), **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value) / grad_accum
        tokens += batch.tokens
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return StepOutput(sums, tokens, time.perf_counter() - t0, phases)


def _prepare_models(cfg: RunConfig, models, sequence_parallel: SequenceParallel | None) -> None:
    """Attention backend and sequence parallelism of both models; gradient checkpointing, sparge attention and
    regional compile of the student."""
    for model in (models.student, models.teacher):
        if model is not None and cfg.model.attention_backend:
            model.set_attention_backend(cfg.model.attention_backend)
        if model is not None and sequence_parallel is not None:
            sequence_parallel.enable(model)
    if cfg.model.gradient_checkpointing:
        models.student.enable_gradient_checkpointing()
    if cfg.sparge.enabled:
        install_sparge(models.student, cfg.sparge)
    if cfg.model.compile:
        # diffusers' context-parallel hooks (sequence parallelism) split and gather a block's inputs with code
        # dynamo cannot trace (inspect.signature in the hook): a graph break there, one graph elsewhere.
        models.student.compile_repeated_blocks(fullgraph=sequence_parallel is None, dynamic=False)  # per video size


def fit(cfg: RunConfig, world: WorldInfo | None = None) -> FitResult:
    # 1. world and configs
    world = world or world_from_env()
    init_distributed(world)
    _seed_everything(cfg.train.seed)
    train, out = cfg.train, Path(cfg.train.output_dir)
    device, dtype = world.device, resolve_dtype(cfg, world.device)
    # Data x sequence: the ranks of a sequence-parallel group share their samples (sequence_parallel.py).
    layout = ParallelLayout.of(cfg.parallel, world.world_size, world.rank)
    data_ranks, data_rank = layout.data_parallel_size, layout.data_rank
    global_batch, grad_accum = train.batch_layout(data_ranks)
    sharded_teacher = uses_sharded_teacher(cfg)
    student_ds = student_ds_config(cfg, data_parallel_size=data_ranks, device=device)
    teacher_ds = teacher_ds_config(cfg, data_parallel_size=data_ranks, device=device) if sharded_teacher else None
    # A damaged or mismatched checkpoint is reported now (preflight.py), before anything is built or overwritten.
    resume_point = find_resume_point(train.resume, out / "checkpoints")
    check_resume(cfg, resume_point)
    if world.is_main:
        _write_run_files(out, cfg, student_ds, teacher_ds)

    # 2. data: every rank derives its micro-batches from (seed, step); nothing to communicate
    dataset = build_dataset(cfg.data)
    sampler = DeterministicBatchSampler(len(dataset), global_batch_size=global_batch,
                                        micro_batch_size=train.micro_batch_size, world_size=data_ranks,
                                        rank=data_rank, seed=train.seed, shuffle=cfg.data.shuffle)
    check_data(cfg, dataset, architecture(cfg.model))

    # 3. models: student (sparse, trainable) and teacher (dense, frozen) with the same weights
    sequence_parallel = init_sequence_parallel(layout, device)
    mpu = sequence_parallel.mpu if sequence_parallel else None
    models = build_student_teacher(cfg, student_ds=student_ds, teacher_ds=teacher_ds,
                                   sharded_teacher=sharded_teacher, rank=world.rank, dtype=dtype, mpu=mpu)
    _prepare_models(cfg, models, sequence_parallel)

    # 4. engines
    engines = build_engines(cfg, models.student, models.teacher, student_ds=student_ds, teacher_ds=teacher_ds,
                            sharded_teacher=sharded_teacher, device=device, dtype=dtype, mpu=mpu)
    student = engines.student
    ema = EMA(student.module, train.ema_decay) if train.ema_decay > 0 else None

    # 5. resume: engine state (weights, optimizer, lr schedule) + trainer state (step, data position, RNG) + EMA
    guard = NonFiniteGuard(train.max_nonfinite_steps, out / "checkpoints")
    checkpoints = Checkpointer(train, student, out / "checkpoints", device=device, is_main=world.is_main,
                               state=TrainerState(global_batch_size=global_batch, world_size=world.world_size),
                               run_info=run_info(cfg), ema=ema, guard=guard)
    state = checkpoints.resume(resume_point)

    # 6. the loop: each component owns its cadence
    result = FitResult(start_step=state.step, final_step=state.step)
    metrics_log = MetricsLogger(out, enabled=world.is_main, tensorboard=train.tensorboard, resume_step=state.step)
    evaluator = Evaluator(cfg, dataset, engines, world_size=data_ranks, rank=data_rank, device=device,
                          dtype=dtype, log=metrics_log, losses=result.eval_losses)
    if state.step == 0:
        evaluator.maybe_eval(0)  # the baseline, before the first update
    train_log = TrainLog(train, metrics_log, student, device=device, data_parallel_size=data_ranks,
                         is_main=world.is_main, start_step=state.step, global_batch=global_batch)
    budget = TimeBudget(train.max_time_s)
    batches = StepPrefetcher(lambda s: step_batches(cfg, sampler, dataset, s, device, dtype), device,
                             stop=train.max_steps)
    try:
        for step in range(state.step, train.max_steps):
            output = train_step(cfg, engines, batches.get(step), device, grad_accum)
            if ema is not None:
                ema.update()
            state.step = result.final_step = step + 1
            state.samples_seen = state.step * global_batch
            metrics = output.mean_over_ranks()
            result.losses[state.step] = metrics["loss"]
            metrics["data_wait_s"] = batches.last_wait_s
            train_log.log(state.step, metrics, seconds=output.seconds + batches.last_wait_s, tokens=output.tokens,
                          phases=output.phases)
            norm = student.get_global_grad_norm()
            guard.check(state.step, metrics["loss"], None if norm is None else float(norm), student.module,
                        student.was_step_applied())  # raises TrainingStopped past train.max_nonfinite_steps
            evaluator.maybe_eval(state.step)
            out_of_time = budget.exhausted()  # collective: every rank stops at the same step
            checkpoints.maybe_save(state.step, stopping=out_of_time)
            if out_of_time and state.step < train.max_steps:
                log.info("train.max_time_s (%.0f s) reached after step %d: stopping; rerun to resume",
                         train.max_time_s, state.step)
                result.stopped_early = True
                break
    finally:
        batches.close()
    train_log.close()

    # 7. export the student's weights (diffusers folder, safetensors)
    if train.export_at_end:
        result.export_dir = export_weights(student, models.student, out / "export", zero3=models.zero3_student,
                                           is_main=world.is_main, weights=ema.state_dict() if ema else None,
                                           trained_mask=cfg.sparge.trained_mask() if cfg.sparge.enabled else None)
    metrics_log.close()
    barrier()
    return result
