"""Sequence parallelism (Ulysses) for distillation: `parallel.sequence_parallel_size` = S.

Layout: the W ranks form W/S data-parallel groups of S consecutive ranks (rank = data_rank·S + sequence_rank, so
a group of 8 is one node and its all-to-alls stay on NVLink). The ranks of a group train on the same samples with
the same noise (the deterministic sampler shards by data-parallel rank), each holding 1/S of the tokens.

Both parts are the engines' own:
- The model: diffusers' context parallelism (`sparge_pipelines.enable_context_parallel`, the Wan `_cp_plan`) on
  the student and the teacher, over a device mesh (data, ring = 1, ulysses = S). The sparge processor runs its
  sparse op between diffusers' all-to-alls, forward and backward (sparge_pipelines/parallel.py). The output is
  gathered, so every rank of a group computes the same loss on the whole sample.
- The optimizer: DeepSpeed's data x sequence groups (`deepspeed.runtime.sequence_parallel.parallel_state_sp`, the
  `mpu` of its own Ulysses training) passed to `zero.Init` and `deepspeed.initialize`: ZeRO shards parameters,
  gradients and optimizer states over all W ranks, and counts W/S data-parallel ranks in the batch size.

Gradients: a rank's parameter gradients are those of its own tokens (the backward of the output gather keeps this
rank's slice of the loss gradient; the backward all-to-alls return each token's gradient to its rank), so they sum
over a group to the sample's gradient. DeepSpeed's reduction with this `mpu` sums over all ranks and divides by
W/S: the mean over the W/S samples, as with W/S plain data-parallel ranks. Losses and metrics need nothing: the S
ranks of a group hold equal values, so their mean over all ranks is the mean over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import ParallelSection

__all__ = ["ParallelLayout", "SequenceParallel", "init_sequence_parallel"]


@dataclass(frozen=True)
class ParallelLayout:
    """This rank's place in the data x sequence grid."""

    world_size: int
    rank: int
    sequence_parallel_size: int = 1

    @classmethod
    def of(cls, section: ParallelSection, world_size: int, rank: int) -> ParallelLayout:
        section.data_parallel_size(world_size)  # ConfigError naming parallel.sequence_parallel_size
        return cls(world_size, rank, section.sequence_parallel_size)

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.sequence_parallel_size

    @property
    def data_rank(self) -> int:
        return self.rank // self.sequence_parallel_size


@dataclass
class SequenceParallel:
    """The process groups of sequence parallelism (S > 1): DeepSpeed's `mpu` and diffusers' context-parallel
    config, whose mesh both models share."""

    layout: ParallelLayout
    mpu: Any  # deepspeed.runtime.sequence_parallel.parallel_state_sp
    context_parallel: Any  # diffusers.ContextParallelConfig

    def enable(self, model: torch.nn.Module) -> None:
        """diffusers' Ulysses context parallelism on a Wan transformer (before or after sparge is installed)."""
        from sparge_pipelines.parallel import enable_context_parallel

        enable_context_parallel(model, self.context_parallel)


def init_sequence_parallel(layout: ParallelLayout, device: torch.device) -> SequenceParallel | None:
    """Create the groups (collective: every rank calls it once, after `init_distributed`); None for S = 1."""
    if layout.sequence_parallel_size == 1:
        return None
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    s = layout.sequence_parallel_size
    parallel_state_sp.initialize_sequence_parallel(s)
    mesh = init_device_mesh(device.type, (layout.data_parallel_size, 1, s), mesh_dim_names=("data", "ring", "ulysses"))
    return SequenceParallel(layout, parallel_state_sp, ContextParallelConfig(ulysses_degree=s, mesh=mesh))
