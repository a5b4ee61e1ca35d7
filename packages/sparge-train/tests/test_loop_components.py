"""The cadence of fit()'s components, without engines: Checkpointer.maybe_save, Evaluator.maybe_eval,
TrainLog.log, TimeBudget — each decides itself when it acts; phase times come from the shared Timer."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import torch

from sparge_train.checkpoint import Checkpointer, TrainerState
from sparge_train.config import LossConfig, TrainConfig
from sparge_train.guards import NonFiniteGuard, TimeBudget
from sparge_train.metrics import MetricsLogger, TrainLog, read_metrics
from sparge_train.trainer import distill_micro_step


def _checkpointer(tmp_path: Path, guard=None, **train) -> Checkpointer:
    return Checkpointer(TrainConfig(**train), engine=None, root=tmp_path, state=TrainerState(), device=torch.device(
        "cpu"), is_main=True, run_info={}, guard=guard)


def test_checkpointer_cadence(tmp_path):
    every3 = _checkpointer(tmp_path, max_steps=10, save_every=3)
    assert [s for s in range(1, 11) if every3.due(s)] == [3, 6, 9, 10]
    assert every3.due(4, stopping=True)  # the time budget ends the run here
    no_end = _checkpointer(tmp_path, max_steps=10, save_every=0, save_at_end=False)
    assert not any(no_end.due(s, stopping=True) for s in range(1, 11))
    guard = NonFiniteGuard(3, tmp_path)
    guarded = _checkpointer(tmp_path, guard=guard, max_steps=10, save_every=3)
    guard.last_step_bad = True
    assert not guarded.due(3) and not guarded.due(10)  # never a checkpoint right after a bad step
    assert guarded.maybe_save(3) is None


def test_train_log_cadence(tmp_path):
    engine = SimpleNamespace(get_global_grad_norm=lambda: 0.5, get_lr=lambda: [1e-4])
    out = MetricsLogger(tmp_path, enabled=True, tensorboard=False)
    train_log = TrainLog(TrainConfig(max_steps=5, log_every=2, progress_bar=False), out, engine,
                         device=torch.device("cpu"), data_parallel_size=2, is_main=True, start_step=0, global_batch=4)
    for step in range(1, 6):
        train_log.log(step, {"loss": float(step)}, seconds=0.5, tokens=10)
    train_log.close()
    out.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert sorted(records) == [2, 4, 5]  # every log_every steps and the last
    assert records[4]["samples_seen"] == 16 and records[4]["tokens_per_s"] == 40.0
    assert records[4]["grad_norm"] == 0.5 and records[4]["lr"] == 1e-4


def test_time_budget():
    assert not TimeBudget(0.0).exhausted()  # 0: no limit
    budget = TimeBudget(0.01)
    time.sleep(0.02)
    assert budget.exhausted()


def test_phase_times_on_the_shared_timer():
    from sparge_pipelines.timing import Timer

    calls = []
    class Student:
        def __call__(self, *a, **k):
            calls.append("student")
            return (torch.zeros(1, requires_grad=True),)

        def backward(self, loss):
            calls.append("backward")

        def step(self):
            calls.append("step")

    engines = SimpleNamespace(teacher=lambda *a: calls.append("teacher") or torch.zeros(1), student=Student())
    batch = SimpleNamespace(x_t=None, timesteps=None, text=None, target=torch.zeros(1))
    timer = Timer()
    timer.start()
    distill_micro_step(engines, batch, LossConfig(), mark=timer.lap)
    assert calls == ["teacher", "student", "backward", "step"]
    assert list(timer.totals_ms()) == ["teacher_forward", "student_forward", "student_backward", "optimizer_step"]
