"""Non-finite loss / gradient guard: a diverged run stops with a clear message and never saves its bad state.

DeepSpeed's ZeRO optimizers already skip the update of a step whose gradients hold inf/NaN (the grad norm then
reads inf). This guard makes that visible and bounded: a step whose mean loss or global grad norm is not finite
is a bad step; it is logged, no checkpoint is written after it (so `keep_last` never rotates a good checkpoint
out for a bad one), and after `train.max_nonfinite_steps` consecutive bad steps — or at once if the weights
themselves became non-finite — the run stops with `TrainingStopped` (the CLI exits 3).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

__all__ = ["TrainingStopped", "NonFiniteGuard", "TimeBudget", "weights_are_finite"]

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run cannot continue (diverged); the message says why and what to do."""


def weights_are_finite(module: torch.nn.Module) -> bool:
    """True when every parameter this rank holds is finite; collective (all ranks must call it).

    Under ZeRO-3 a parameter's local shard is `ds_tensor` (the full `param` is an empty placeholder).
    """
    from .distributed import all_reduce_mean

    bad = 0.0
    with torch.no_grad():
        for p in module.parameters():
            local = getattr(p, "ds_tensor", p)
            if local.numel() and not bool(torch.isfinite(local).all()):
                bad = 1.0
                break
    return float(all_reduce_mean(torch.tensor([bad], dtype=torch.float64))[0]) == 0.0


class NonFiniteGuard:
    """Counts consecutive steps with a non-finite loss or grad norm and stops the run past the limit."""

    def __init__(self, max_consecutive: int, checkpoint_root: Path):
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.root = checkpoint_root
        self.consecutive = 0
        self.last_step_bad = False

    def _advice(self) -> str:
        latest = self.root / "latest"
        if latest.is_file():
            return (f"the newest good checkpoint is {self.root / latest.read_text().strip()}; lower optim.lr (or "
                    "optim.grad_clip) and resume from it")
        return "no checkpoint was written yet; lower optim.lr (or optim.grad_clip) and start again"

    def check(self, step: int, loss: float, grad_norm: float | None, module: torch.nn.Module,
              update_applied: bool | None = None) -> bool:
        """After optimizer step `step`: True if the step was good. Raises TrainingStopped when the run must end.

        Collective when the step was bad (the weights are checked on every rank).
        """
        finite_loss = math.isfinite(loss)
        finite_norm = grad_norm is None or math.isfinite(grad_norm)
        self.last_step_bad = not (finite_loss and finite_norm)
        if not self.last_step_bad:
            self.consecutive = 0
            return True
        self.consecutive += 1
        what = ", ".join(f"{name}={value}" for name, value, ok in (("loss", loss, finite_loss),
                                                                  ("grad_norm", grad_norm, finite_norm)) if not ok)
        skipped = {True: "the update was applied", False: "DeepSpeed skipped the update",
                   None: "the update may have been applied"}[update_applied]
        advice = self._advice()
        if not weights_are_finite(module):
            raise TrainingStopped(f"step {step}: non-finite {what} and the model weights are no longer finite "
                                  f"({skipped}); stopping without saving — {advice}")
        log.warning("step %d: non-finite %s (%s); no checkpoint after this step [%d consecutive, limit "
                    "train.max_nonfinite_steps=%d]", step, what, skipped, self.consecutive, self.max_consecutive)
        if self.consecutive > self.max_consecutive:
            raise TrainingStopped(f"step {step}: {self.consecutive} consecutive steps with a non-finite loss or "
                                  f"gradient norm (last: {what}; train.max_nonfinite_steps="
                                  f"{self.max_consecutive}); stopping — {advice}")
        return False


class TimeBudget:
    """`train.max_time_s`: the loop stops (saving a checkpoint) once a step ends this many seconds after the
    budget started; 0: no limit. `exhausted()` is collective (every rank stops at the same step)."""

    def __init__(self, max_time_s: float) -> None:
        self.max_time_s = max_time_s
        self.started = time.perf_counter()

    def exhausted(self) -> bool:
        from .distributed import all_reduce_mean

        over = self.max_time_s > 0 and time.perf_counter() - self.started >= self.max_time_s
        return bool(all_reduce_mean(torch.tensor([float(over)], dtype=torch.float64)).item() > 0)
