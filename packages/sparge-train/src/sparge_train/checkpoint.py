"""Checkpoints: DeepSpeed engine state + trainer state (step, data position, RNG), and safetensors export.

DeepSpeed's own TorchCheckpointEngine unpickles with weights_only=False; every engine we create gets
`SafeTorchCheckpointEngine`, which loads with weights_only=True and allows only the few DeepSpeed classes a
ZeRO checkpoint contains. The trainer state holds only tensors, ints and lists, so it needs nothing more.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .distributed import barrier

__all__ = [
    "TrainerState",
    "SafeTorchCheckpointEngine",
    "install_safe_checkpoint_engine",
    "safe_checkpoint_globals",
    "save_checkpoint",
    "load_checkpoint",
    "find_resume_point",
    "export_weights",
]

log = logging.getLogger(__name__)

CLIENT_KEY = "sparge_train"
TAG_PREFIX = "step_"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps completed
    samples_seen: int = 0  # data position: the sampler resumes from `step`, samples_seen double-checks it
    global_batch_size: int = 0
    world_size: int = 0
    rng: dict[str, Any] = field(default_factory=dict)

    def capture_rng(self, device: torch.device) -> None:
        self.rng = {"cpu": torch.get_rng_state(), "python": _flatten_python_state(random.getstate())}
        if device.type == "cuda":
            self.rng["cuda"] = torch.cuda.get_rng_state(device)

    def restore_rng(self, device: torch.device) -> None:
        if "cpu" in self.rng:
            torch.set_rng_state(self.rng["cpu"])
        if "python" in self.rng:
            random.setstate(_unflatten_python_state(self.rng["python"]))
        if device.type == "cuda" and "cuda" in self.rng:
            torch.cuda.set_rng_state(self.rng["cuda"], device)

    def to_client_state(self) -> dict[str, Any]:
        return {CLIENT_KEY: {"step": self.step, "samples_seen": self.samples_seen,
                             "global_batch_size": self.global_batch_size, "world_size": self.world_size,
                             "rng": self.rng}}

    @classmethod
    def from_client_state(cls, client: dict[str, Any]) -> TrainerState:
        if CLIENT_KEY not in client:
            raise KeyError(f"checkpoint has no {CLIENT_KEY!r} client state (not written by sparge-train)")
        s = client[CLIENT_KEY]
        return cls(step=int(s["step"]), samples_seen=int(s["samples_seen"]),
                   global_batch_size=int(s["global_batch_size"]), world_size=int(s["world_size"]), rng=s["rng"])


def _flatten_python_state(state: tuple) -> list:
    version, internal, gauss = state  # (3, 625 ints, None | float): plain types load with weights_only
    return [version, list(internal), gauss]


def _unflatten_python_state(flat: list) -> tuple:
    version, internal, gauss = flat
    return int(version), tuple(int(x) for x in internal), gauss


def safe_checkpoint_globals() -> list[Any]:
    """The non-tensor classes a DeepSpeed ZeRO checkpoint pickles (loss scaler, stage enum, fragment maps)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    allowed: list[Any] = [LossScaler, DynamicLossScaler, ZeroStageEnum]
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    except ImportError:
        pass
    return allowed


def _safe_torch_load(path: str, map_location=None) -> Any:
    with torch.serialization.safe_globals(safe_checkpoint_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _safe_engine_class():
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class _Safe(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return _safe_torch_load(path, map_location=map_location)

    _Safe.__name__ = _Safe.__qualname__ = "SafeTorchCheckpointEngine"
    return _Safe


def SafeTorchCheckpointEngine(config_params=None):  # noqa: N802 (a class factory: deepspeed is imported lazily)
    return _safe_engine_class()(config_params)


def install_safe_checkpoint_engine(engine) -> None:
    """Replace the engine's checkpoint engine by the weights_only one (same serialization settings)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = getattr(engine, "checkpoint_engine", None)
    if current is not None and type(current) is not TorchCheckpointEngine:
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(current).__name__}; only the torch "
                           "engine is supported (it is the one made safe)")
    engine.checkpoint_engine = SafeTorchCheckpointEngine(engine._config)


def _tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def save_checkpoint(engine, root: Path, state: TrainerState, *, keep_last: int, is_main: bool,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank writes its ZeRO partition; rank 0 then prunes all but the newest keep_last.
    `extra(checkpoint_dir)` (rank 0) writes companion files first, so `latest` never names a checkpoint
    without them."""
    tag = _tag(state.step)
    if extra is not None and is_main:
        (root / tag).mkdir(parents=True, exist_ok=True)
        extra(root / tag)
    engine.save_checkpoint(str(root), tag=tag, client_state=state.to_client_state())
    barrier()
    if is_main:
        tags = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))
        for old in tags[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return root / tag


def find_resume_point(resume: str, root: Path) -> tuple[Path, str] | None:
    """(load_dir, tag) to resume from: `auto` → the newest complete checkpoint under root, if any."""
    if resume == "none":
        return None
    if resume == "auto":
        latest = root / "latest"  # written by DeepSpeed after all files of a save
        if not latest.is_file():
            return None
        return root, latest.read_text().strip()
    path = Path(resume)
    return path.parent, path.name


def load_checkpoint(engine, load_dir: Path, tag: str, device: torch.device) -> TrainerState:
    load_path, client = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"train.resume: no DeepSpeed checkpoint {tag!r} in {load_dir}")
    state = TrainerState.from_client_state(client)
    state.restore_rng(device)
    return state


def export_weights(engine, model: torch.nn.Module, out_dir: Path, *, zero3: bool, is_main: bool,
                   weights: dict[str, torch.Tensor] | None = None) -> Path | None:
    """Write the student as a diffusers folder: config.json + diffusion_pytorch_model.safetensors (16-bit under
    bf16 training). Collective under ZeRO-3 (parameters are gathered to rank 0). `weights` (e.g. the EMA)
    replaces the engine's parameters of the same names."""
    from safetensors.torch import save_file

    # The architecture's persistent tensors (parameters + persistent buffers), whatever sparge attached.
    arch_keys = {name for name, _ in model.named_parameters()}
    for module_name, module in model.named_modules():
        for buf_name, _ in module.named_buffers(recurse=False):
            if buf_name not in module._non_persistent_buffers_set:
                arch_keys.add(f"{module_name}.{buf_name}" if module_name else buf_name)
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero3 else engine.module.state_dict()
    if weights is not None:
        state_dict = {**state_dict, **{k: v.to(state_dict[k].dtype) for k, v in weights.items()}}
    if not is_main:
        barrier()
        return None
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k in arch_keys}
    missing = arch_keys - tensors.keys()
    if missing:
        raise RuntimeError(f"export lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    model.save_config(str(out_dir))
    (out_dir / "sparge_export.json").write_text(json.dumps({"tensors": len(tensors)}))
    barrier()
    return out_dir
