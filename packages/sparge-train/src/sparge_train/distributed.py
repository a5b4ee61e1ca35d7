"""Process-group setup for deepspeed / torchrun / plain python launches, and small collective helpers.

All three launchers export RANK, LOCAL_RANK, WORLD_SIZE (deepspeed also passes --local_rank, which the CLI
accepts). A plain `python` launch has none of them: it runs as a world of one, on a local TCP rendezvous.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

__all__ = ["WorldInfo", "world_from_env", "init_distributed", "all_reduce_mean", "barrier", "is_initialized",
           "shutdown_distributed"]


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: environment variable must be an integer, got {value!r}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_from_env(local_rank_arg: int | None = None) -> WorldInfo:
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK: {rank} is not in [0, WORLD_SIZE={world_size})")
    force_cpu = os.environ.get("DS_ACCELERATOR", "") == "cpu" or os.environ.get("SPARGE_TRAIN_DEVICE") == "cpu"
    if torch.cuda.is_available() and not force_cpu:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK: {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        return WorldInfo(rank, local_rank, world_size, torch.device("cuda", local_rank), "nccl")
    return WorldInfo(rank, local_rank, world_size, torch.device("cpu"), "gloo")


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(world: WorldInfo) -> None:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU). Idempotent."""
    if world.device.type == "cpu":
        # DeepSpeed picks its accelerator at import; make sure a CPU run never probes for CUDA.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    if world.world_size == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", str(world.rank))
    os.environ.setdefault("LOCAL_RANK", str(world.local_rank))
    os.environ.setdefault("WORLD_SIZE", str(world.world_size))
    if is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=world.backend, auto_mpi_discovery=False, verbose=False)
    _unlink_deepspeed_shm(world)


def _unlink_deepspeed_shm(world: WorldInfo) -> None:
    """Remove the name of this rank's DeepSpeed shared-memory allreduce segment, keeping the mapping.

    When all ranks are on one host, DeepSpeed's SHM allreduce (deepspeed/ops/csrc/cpu/comm/shm.cpp) creates a
    ~67 MB /dev/shm segment per rank at init, maps every rank's, and never unlinks them: each run left
    world_size segments in RAM-backed /dev/shm (292 of them, 19 GB, had piled up on the development machine,
    which then swapped). Once every rank has returned from init, every rank has mapped every segment, so the
    names can go; the memory is freed when the last rank exits, killed or not."""
    if world.world_size > 1:
        barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{world.rank}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:  # no SHM allreduce (ranks on several hosts, or no shm op for this accelerator)
        pass


def barrier() -> None:
    if is_initialized():
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()


def shutdown_distributed() -> None:
    """Destroy the process group (end of a CLI run; NCCL warns about leaked resources otherwise)."""
    if is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (float64 on the caller's device); identity without a process group."""
    out = values.detach().to(torch.float64).clone()
    if is_initialized() and torch.distributed.get_world_size() > 1:
        if torch.distributed.get_backend() == "nccl" and out.device.type != "cuda":
            out = out.cuda()
        torch.distributed.all_reduce(out)
        out = out / torch.distributed.get_world_size()
    return out.to(values.device)
