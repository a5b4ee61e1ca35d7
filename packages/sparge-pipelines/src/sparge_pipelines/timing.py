"""`AttentionTimer`: time spent in the self-attention processors, per denoising step.

On CUDA each call records an event pair (no sync); `totals()` synchronises once. On CPU, perf_counter.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

__all__ = ["AttentionTimer"]


class AttentionTimer:
    def __init__(self) -> None:
        self._events: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self._cpu_ms: dict[int, float] = defaultdict(float)

    def start(self, device: torch.device) -> object:
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            return start
        return time.perf_counter()

    def stop(self, step: int, token: object) -> None:
        if isinstance(token, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((step, token, end))
        else:
            self._cpu_ms[step] += (time.perf_counter() - token) * 1e3  # type: ignore[operator]

    def totals(self) -> dict[int, float]:
        """Milliseconds per step, summed over layers and calls."""
        ms = defaultdict(float, self._cpu_ms)
        if self._events:
            self._events[-1][2].synchronize()
            for step, start, end in self._events:
                ms[step] += start.elapsed_time(end)
        return dict(sorted(ms.items()))

    def reset(self) -> None:
        self._events.clear()
        self._cpu_ms.clear()
