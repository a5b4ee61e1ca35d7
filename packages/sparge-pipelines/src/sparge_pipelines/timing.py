"""`Timer`: intervals on the device's own clock, summed per key — the one timer of sparge-pipelines and sparge-train.

On a CUDA device each mark is an event recorded on the device's current stream (no sync); reading the times
(`intervals_ms`, `totals_ms`) synchronises once. Otherwise marks are `time.perf_counter()` readings.

Two ways to measure:
- `token = start(device)` ... `stop(key, token)`: explicit intervals, which may nest or interleave (the time of every
  self-attention call, keyed by denoising step);
- `start()`, then `lap(key)` after each phase: back-to-back intervals (phases of a training step, denoising steps).

Used by: the attention-timing hook (`apply_sparge(time_attention=True)`, `SpargeState.timer`), the per-step clock
of `sparge-generate` (`generate.StepClock`), and `sparge-train`'s phase times (`train.time_phases`).
"""

from __future__ import annotations

import time
from collections.abc import Hashable

import torch

__all__ = ["Timer", "AttentionTimer"]


class Timer:
    def __init__(self, device: torch.device | str | None = None) -> None:
        """`device`: where marks are taken when a call does not say (None: the host clock)."""
        self.device = torch.device(device) if device is not None else None
        self._intervals: list[tuple[Hashable, object, object]] = []  # (key, start mark, end mark)
        self._last: object | None = None

    def now(self, device: torch.device | str | None = None) -> object:
        """A mark: a recorded CUDA event on a CUDA device, else a perf_counter reading (seconds)."""
        device = torch.device(device) if device is not None else self.device
        if device is not None and device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(device))
            return event
        return time.perf_counter()

    def start(self, device: torch.device | str | None = None) -> object:
        """Take a mark, remember it as the start of the next `lap`, and return it (the token for `stop`)."""
        self._last = self.now(device)
        return self._last

    def stop(self, key: Hashable, start: object | None = None, device: torch.device | str | None = None) -> object:
        """End an interval under `key`, from `start` (default: the previous mark); the end is the next lap's start."""
        begin = self._last if start is None else start
        if begin is None:
            raise RuntimeError("Timer.stop/lap before any start()")
        if device is None and isinstance(begin, torch.cuda.Event):
            device = self.device if self.device is not None and self.device.type == "cuda" else "cuda"
        end = self.now(device)
        self._intervals.append((key, begin, end))
        self._last = end
        return end

    def lap(self, key: Hashable) -> None:
        """The interval from the previous mark to now, under `key`."""
        self.stop(key)

    def intervals_ms(self) -> list[tuple[Hashable, float]]:
        """(key, milliseconds) of every interval, in the order they ended (synchronises on CUDA)."""
        out = []
        for key, begin, end in self._intervals:
            if isinstance(end, torch.cuda.Event):
                end.synchronize()
                ms = begin.elapsed_time(end)
            else:
                ms = (end - begin) * 1e3
            out.append((key, ms))
        return out

    def totals_ms(self) -> dict[Hashable, float]:
        """Milliseconds summed per key, keys in first-seen order."""
        totals: dict[Hashable, float] = {}
        for key, ms in self.intervals_ms():
            totals[key] = totals.get(key, 0.0) + ms
        return totals

    def totals(self) -> dict[Hashable, float]:
        """`totals_ms()` sorted by key (for the attention timer: milliseconds per denoising step)."""
        return dict(sorted(self.totals_ms().items()))

    def reset(self) -> None:
        self._intervals.clear()
        self._last = None


AttentionTimer = Timer  # the name `SpargeState.timer` had before the three timers became one
