"""Deterministic, resumable assignment of samples to (step, rank, micro-batch).

Global step s consumes the global batch perm_e[(s mod S)·G : (s mod S + 1)·G] of epoch e = s // S, where
perm_e is a seeded permutation and S = N // G steps per epoch (the ragged tail of an epoch is dropped).
Micro-batch m of rank r takes slice (m·W + r)·b … +b of it, so the global batch, and therefore the step's
averaged gradient, is the same for any (world size W, micro-batch b, accumulation) with the same G.
Each sample also gets its global stream position s·G + j, which seeds its noise: ranks agree without
communication, and resuming at step s needs nothing but s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DeterministicBatchSampler", "MicroBatch"]


@dataclass(frozen=True)
class MicroBatch:
    indices: list[int]  # dataset indices
    positions: list[int]  # global stream positions (seed the per-sample noise)


class DeterministicBatchSampler:
    def __init__(
        self,
        num_samples: int,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        shuffle: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} not in [0, world_size={world_size})")
        if micro_batch_size < 1 or global_batch_size % (micro_batch_size * world_size):
            raise ValueError(f"global_batch_size: {global_batch_size} is not a multiple of micro_batch_size "
                             f"({micro_batch_size}) × world_size ({world_size})")
        if num_samples < global_batch_size:
            raise ValueError(f"num_samples: the dataset has {num_samples} samples, fewer than one global batch "
                             f"({global_batch_size})")
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.steps_per_epoch = num_samples // global_batch_size
        self.grad_accum = global_batch_size // (micro_batch_size * world_size)
        self._perm_epoch = -1
        self._perm: list[int] = []

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.num_samples, generator=g).tolist()
            else:
                self._perm = list(range(self.num_samples))
            self._perm_epoch = epoch
        return self._perm

    def global_batch(self, step: int) -> list[int]:
        """Dataset indices of the whole global batch of optimizer step `step` (0-based)."""
        if step < 0:
            raise ValueError(f"step: must be >= 0, got {step}")
        perm = self._permutation(self.epoch_of(step))
        start = (step % self.steps_per_epoch) * self.global_batch_size
        return perm[start:start + self.global_batch_size]

    def micro_batches(self, step: int) -> list[MicroBatch]:
        """This rank's micro-batches of step `step`, in accumulation order."""
        batch = self.global_batch(step)
        b, w = self.micro_batch_size, self.world_size
        out = []
        for m in range(self.grad_accum):
            start = (m * w + self.rank) * b
            out.append(MicroBatch(indices=batch[start:start + b],
                                  positions=[step * self.global_batch_size + j for j in range(start, start + b)]))
        return out
