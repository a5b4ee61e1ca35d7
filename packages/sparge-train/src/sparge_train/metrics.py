"""Run logs on rank 0: one JSON object per logged step (metrics.jsonl) and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "TrainLog", "read_metrics"]


def _truncate_after(path: Path, step: int) -> int:
    """Drop the records of steps after `step` (a resumed run replays them); returns how many were dropped.

    Rewritten to a temporary file and renamed, so a kill here cannot lose the records that are kept.
    """
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            late = int(json.loads(line)["step"]) > step or step == 0  # a fresh start (step 0) keeps nothing
        except (ValueError, KeyError, TypeError):
            late = True  # a line torn by the kill: not a record
        if late:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricsLogger:
    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None = None):
        """`resume_step`: the run resumes after this step; records of later steps (logged before the crash, and
        about to be logged again) are removed, so every step appears once."""
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _truncate_after(out_dir / "metrics.jsonl", resume_step)
        self._jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # appended across resumes
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class TrainLog:
    """The training steps' log and its cadence: `log(step, metrics, ...)` writes a record every `train.log_every`
    steps and at the last one — the step's mean metrics plus lr, grad norm, step time, tokens/s, samples seen, peak
    GPU memory (since the loop started) and phase times (`train.time_phases`) — and advances the progress bar
    (rank 0, `train.progress_bar`) every step."""

    def __init__(self, train_cfg: Any, log: MetricsLogger, engine, *, device, data_parallel_size: int, is_main: bool,
                 start_step: int, global_batch: int) -> None:
        import torch
        from tqdm import tqdm

        self.cfg, self.out, self.engine = train_cfg, log, engine
        # tokens/s counts each data-parallel group's tokens once (its sequence-parallel ranks share them)
        self.device, self.data_parallel_size, self.global_batch = device, data_parallel_size, global_batch
        self.progress = tqdm(total=train_cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             disable=not (is_main and train_cfg.progress_bar))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def due(self, step: int) -> bool:
        return step % self.cfg.log_every == 0 or step == self.cfg.max_steps

    def log(self, step: int, metrics: dict[str, Any], *, seconds: float, tokens: int, phases=None) -> None:
        """`metrics` (the step's means over micro-batches and ranks) gains the extras in place when logged;
        `phases`: the step's `Timer` of distill_micro_step phases, or None."""
        if self.due(step):
            import torch

            grad_norm = self.engine.get_global_grad_norm()
            metrics.update({
                "lr": self.engine.get_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "step_time_s": seconds,
                "tokens_per_s": tokens * self.data_parallel_size / seconds,
                "samples_seen": step * self.global_batch,
            })
            if self.device.type == "cuda":
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            if phases is not None:
                metrics.update({f"{name}_ms": ms for name, ms in phases.totals_ms().items()})
            self.out.log(step, metrics)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{metrics['loss']:.4g}")

    def close(self) -> None:
        self.progress.close()


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """step → its fields merged over the records logged for it (train and eval records are separate lines; a
    resumed run drops the records after its checkpoint before logging them again)."""
    out: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(int(rec["step"]), {}).update(rec)
    return out
