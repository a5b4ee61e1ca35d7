"""Builds the next optimizer step's batches in a background thread while the current step trains.

Rendering world videos, drawing each sample's noise from its own CPU generator and copying it to the GPU cost tens
of milliseconds a step; done inline, the GPU idles for all of it. Batches depend only on the step (the sampler and
the noise are seeded by stream position), so building step s + 1 early changes nothing in what is trained.
On CUDA the builder runs on its own stream; the consumer's stream waits for it before the batch is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

__all__ = ["StepPrefetcher"]

T = TypeVar("T")


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for name in obj.__dataclass_fields__ for t in _tensors(getattr(obj, name))]
    return []


class StepPrefetcher(Generic[T]):
    """`get(step)` returns `build(step)` and starts building `step + 1` (unless it is `stop`) in the background."""

    def __init__(self, build: Callable[[int], T], device: torch.device, *, stop: int) -> None:
        self._build = build
        self._device = device
        self._stop = stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparge-prefetch")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending: tuple[int, Future] | None = None
        self.last_wait_s = 0.0  # how long the last `get` waited for its batch (0: the builder kept ahead)

    def _run(self, step: int) -> tuple[T, torch.cuda.Event | None]:
        if self._stream is None:
            return self._build(step), None
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            batch = self._build(step)
            done = torch.cuda.Event()
            done.record(self._stream)
        return batch, done

    def get(self, step: int) -> T:
        if self._pending is not None and self._pending[0] == step:
            future = self._pending[1]
        else:  # first call, or a step out of sequence: build it now
            future = self._pool.submit(self._run, step)
        t0 = time.perf_counter()
        batch, done = future.result()
        self.last_wait_s = time.perf_counter() - t0
        self._pending = (step + 1, self._pool.submit(self._run, step + 1)) if step + 1 < self._stop else None
        if done is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(done)
            for t in _tensors(batch):
                if t.device.type == "cuda":
                    t.record_stream(current)  # the allocator must not hand this memory back to the builder early
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending = None
