"""`SpargeState`: what the processors of one `apply_sparge` call share at run time.

The transformer's forward pre-hook (`begin_forward`) sets, once per transformer call, the denoising step index and
the post-patchify grid (T, H, W); the processors only read them.

Step index: with a pipeline, the scheduler's own `step_index` (None before the first `scheduler.step`, reset by
`set_timesteps` at every pipeline call), so CFG run as two transformer calls or as one batch-2 call counts once and
no device sync is needed. With a bare transformer, the step advances whenever the timestep decreases and restarts
at 0 when it increases (a new sampling run); `step_override` pins it explicitly.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .config import SpargeConfig
from .stats import DensityStats
from .tiling import invert_permutation, tile_permutation
from .timing import Timer

__all__ = ["SpargeState"]


class SpargeState:
    def __init__(self, config: SpargeConfig, pipeline: Any | None = None) -> None:
        self.config = config
        self.stats: DensityStats | None = DensityStats() if config.collect_stats else None
        self.timer: Timer | None = Timer() if config.time_attention else None
        self.step = 0
        # A bool, not the step: under torch.compile the processors then guard on two values, not on every step.
        self.dense_now = config.dense_steps > 0
        self.step_override: int | None = None
        self.grid: tuple[int, int, int] | None = None
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self._last_timestep: float | None = None
        self._permutations: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.perm: torch.Tensor | None = None
        self.inverse_perm: torch.Tensor | None = None

    @property
    def needs_forward_hook(self) -> bool:
        c = self.config
        return c.token_order == "tiled" or c.dense_steps > 0 or c.collect_stats or c.time_attention

    @torch.compiler.disable
    def begin_forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | None, patch_size) -> None:
        """Called before every transformer forward with its input latents (B, C, F, H, W)."""
        _, _, f, h, w = hidden_states.shape
        self.grid = (f // patch_size[0], h // patch_size[1], w // patch_size[2])
        self.step = self._next_step(timestep)
        self.dense_now = self.step < self.config.dense_steps
        if self.config.token_order == "tiled":
            self._update_permutation(hidden_states.device)

    def _next_step(self, timestep: torch.Tensor | None) -> int:
        if self.step_override is not None:
            return self.step_override
        pipe = self._pipeline() if self._pipeline is not None else None
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "step_index"):
            return scheduler.step_index or 0
        if not (self.config.dense_steps or self.config.collect_stats or self.config.time_attention):
            return 0  # only the grid is needed: skip the timestep read (a device sync)
        if timestep is None:
            return self.step
        t = float(timestep.reshape(-1)[0])
        last, self._last_timestep = self._last_timestep, t
        if last is None or t > last:
            return 0
        return self.step + 1 if t < last else self.step

    def _update_permutation(self, device: torch.device) -> None:
        """Set `perm` / `inverse_perm` for the current grid (cached per grid and device). Done here in the eager
        hook, so a compiled processor only reads two tensors and never traces the cache."""
        key = (self.grid, str(device))
        if key not in self._permutations:
            perm = tile_permutation(self.grid, self.config.tile, device=device)
            self._permutations[key] = (perm, invert_permutation(perm))
        self.perm, self.inverse_perm = self._permutations[key]

    def permutation(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm, inverse) of the tiled token order for the current grid."""
        if self.perm is None:
            raise RuntimeError("token_order='tiled' needs the patch grid, but the transformer forward hook never ran")
        if self.perm.numel() != seq_len:
            raise ValueError(
                f"token_order='tiled': the patch grid {self.grid} has {self.perm.numel()} tokens but self-attention "
                f"got {seq_len} (under context parallelism the processor permutes the whole sequence, after the "
                "all-to-all; a sequence split some other way is not supported)"
            )
        return self.perm, self.inverse_perm

    @torch.compiler.disable
    def end_forward(self) -> None:
        """Called after every transformer forward: file the densities the statistics hooks queued under the step."""
        if self.stats is not None:
            self.stats.flush(self.step)

    @torch.compiler.disable
    def record_density(self, layer: str, density_per_head: torch.Tensor) -> None:
        """Record (B, H) densities under the current step now (eager code; the hooks queue instead)."""
        if self.stats is not None:
            self.stats.record(self.step, layer, density_per_head)

    def reset(self) -> None:
        """Forget recorded statistics and timings and the step counter (e.g. between generations)."""
        self.step, self._last_timestep = 0, None
        self.dense_now = self.config.dense_steps > 0
        if self.stats is not None:
            self.stats.reset()
        if self.timer is not None:
            self.timer.reset()
