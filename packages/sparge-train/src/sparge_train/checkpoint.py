"""Checkpoints: DeepSpeed engine state + trainer state (step, data position, RNG), and safetensors export.

DeepSpeed's own TorchCheckpointEngine unpickles with weights_only=False; every engine we create gets
`SafeTorchCheckpointEngine`, which loads with weights_only=True and allows only the few DeepSpeed classes a
ZeRO checkpoint contains. The trainer state holds only tensors, ints and lists, so it needs nothing more.

Crash safety: a checkpoint is written under a hidden `.tmp-step_XXXXXXXX` folder, then rank 0 writes
`sparge_manifest.json` (every file and its size, plus the run's model architecture), renames the folder to
`step_XXXXXXXX` and atomically replaces `latest`. A kill at any point leaves `latest` on the previous complete
checkpoint. On resume, a checkpoint whose files do not match its manifest (truncated, deleted) is reported by
file name and `auto` falls back to the newest intact one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
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
    "checkpoint_problem",
    "read_manifest",
    "CheckpointError",
    "export_weights",
    "Checkpointer",
]

log = logging.getLogger(__name__)

CLIENT_KEY = "sparge_train"
TAG_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
MANIFEST = "sparge_manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


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


def _load_failure_reason(exc: BaseException) -> str:
    """A one-line reason for a failed torch.load, without torch's advice to retry with weights_only=False
    (unpickling arbitrary objects from a file is exactly what the safe loader exists to refuse)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line
    lines = [line for line in lines if "weights_only" not in line]
    return f"{type(exc).__name__}: {lines[0] if lines else 'unreadable'}"


def _safe_torch_load(path: str, map_location=None) -> Any:
    try:
        with torch.serialization.safe_globals(safe_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be loaded: {_load_failure_reason(exc)} (truncated or corrupted file, "
                              "or not a sparge-train/DeepSpeed checkpoint)") from None


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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def save_checkpoint(engine, root: Path, state: TrainerState, *, keep_last: int, is_main: bool,
                    run_info: dict[str, Any] | None = None, extra: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank writes its ZeRO partition into a temporary folder; rank 0 then writes the manifest,
    renames the folder into place, points `latest` at it and prunes all but the newest keep_last.

    `run_info` (e.g. the model architecture) goes into the manifest so a resume can check it before loading.
    `extra(folder)` (rank 0) writes companion files (the EMA) into the temporary folder, so they are in the
    manifest and `latest` never names a checkpoint without them.
    """
    tag = _tag(state.step)
    tmp, final = root / f"{TMP_PREFIX}{tag}", root / tag
    if is_main and tmp.exists():
        shutil.rmtree(tmp)  # left by a save that was killed
    barrier()
    engine.save_checkpoint(str(root), tag=tmp.name, client_state=state.to_client_state(), save_latest=False)
    if extra is not None and is_main:
        extra(tmp)
    barrier()
    if is_main:
        manifest = {"tag": tag, "step": state.step, "files": _file_sizes(tmp), "run": run_info or {}}
        _write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))
        if final.exists():  # the same step saved again (a resumed run replaying it): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / "latest", tag)
        # Folders past this step (a run resumed from an older checkpoint) are not counted: the newest keep_last
        # up to this step always survive.
        tags = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX) and p.name <= tag)
        for old in tags[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"corrupt": True}


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not an intact checkpoint (naming the file), or None when it is.

    Checkpoints written before manifests existed are accepted when they hold DeepSpeed's model-states file.
    """
    if not folder.is_dir():
        return f"{folder} does not exist"
    manifest = read_manifest(folder)
    if manifest is None:
        if any(folder.glob("*model_states.pt")):
            return None  # no manifest: an older sparge-train wrote it; loading still reports a bad file clearly
        return f"{folder} has no {MANIFEST} and no model states (an incomplete save)"
    if manifest.get("corrupt") or "files" not in manifest:
        return f"{folder / MANIFEST} is corrupt"
    for name, size in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path} has {actual} bytes, the checkpoint manifest says {size} (truncated or overwritten)"
    return None


def find_resume_point(resume: str, root: Path) -> tuple[Path, str] | None:
    """(load_dir, tag) to resume from, checked intact.

    `auto`: the checkpoint `latest` names, else — if it is damaged or missing — the newest intact `step_*`
    folder (logged as a warning); None when there is no checkpoint. An explicit folder must be intact.
    Raises CheckpointError naming the bad file when nothing usable is left.
    """
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(f"train.resume: {problem}")
        return path.parent, path.name
    candidates: list[Path] = []
    latest = root / "latest"  # written only after a save is complete
    if latest.is_file():
        candidates.append(root / latest.read_text().strip())
    if root.is_dir():
        steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX)), reverse=True)
        candidates += [p for p in steps if p not in candidates]
    problems = []
    for folder in candidates:
        problem = checkpoint_problem(folder)
        if problem is None:
            if problems:
                log.warning("falling back to the newest intact checkpoint %s", folder)
            return root, folder.name
        if not folder.exists() and candidates and folder == candidates[0] and latest.is_file():
            problem = f"{latest} names {folder.name}, which does not exist"
        log.warning("checkpoint %s is unusable: %s", folder, problem)
        problems.append(problem)
    if problems:
        raise CheckpointError(f"no intact checkpoint under {root}: " + "; ".join(problems) +
                              " (set train.resume=none to start over, or a new train.output_dir)")
    return None


def load_checkpoint(engine, load_dir: Path, tag: str, device: torch.device) -> TrainerState:
    """Engine + trainer state; a file that cannot be read raises CheckpointError naming it."""
    load_path, client = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"train.resume: no DeepSpeed checkpoint {tag!r} in {load_dir}")
    state = TrainerState.from_client_state(client)
    state.restore_rng(device)
    return state


def export_weights(engine, model: torch.nn.Module, out_dir: Path, *, zero3: bool, is_main: bool,
                   weights: dict[str, torch.Tensor] | None = None,
                   trained_mask: dict[str, Any] | None = None) -> Path | None:
    """Write the student as a diffusers folder: config.json + diffusion_pytorch_model.safetensors (16-bit under
    bf16 training). Collective under ZeRO-3 (parameters are gathered to rank 0). `weights` (e.g. the EMA)
    replaces the engine's parameters of the same names. `trained_mask`: the sparse attention the student was
    trained under, written as sparge.json, which sparge-pipelines' loaders serve it with by default."""
    from safetensors.torch import save_file

    from sparge_pipelines.config import TRAINED_SPARGE_FILE

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
    stale = out_dir / TRAINED_SPARGE_FILE
    if trained_mask is not None:
        stale.write_text(json.dumps({**trained_mask, "trained_by": "sparge-train"}, indent=1))
    elif stale.exists():  # a dense run exporting over an earlier sparse one: no mask to serve with
        stale.unlink()
    barrier()
    return out_dir


class Checkpointer:
    """The run's checkpoints: resume at start-up, and the save cadence of the loop (`maybe_save(step)`).

    Saves every `train.save_every` steps, and at the last step or when the time budget stops the run
    (`train.save_at_end`); never right after a step the non-finite guard found bad (`guard.last_step_bad`), so
    `keep_last` never rotates a good checkpoint out for a bad one. The EMA (if any) is saved inside each checkpoint.
    """

    def __init__(self, train_cfg: Any, engine, root: Path, *, state: TrainerState, device: torch.device,
                 is_main: bool, run_info: dict[str, Any], ema: Any | None = None, guard: Any | None = None) -> None:
        self.cfg = train_cfg
        self.engine = engine
        self.root = root
        self.state = state
        self.device = device
        self.is_main = is_main
        self.run_info = run_info
        self.ema = ema
        self.guard = guard

    def resume(self, point: tuple[Path, str] | None) -> TrainerState:
        """Load engine + trainer state (+ EMA) from `point` (None: a fresh start) into `self.state`; returns it."""
        if point is None:
            return self.state
        fresh = self.state
        state = load_checkpoint(self.engine, *point, device=self.device)
        if state.global_batch_size != fresh.global_batch_size:
            raise ValueError(f"train.global_batch_size: the checkpoint was trained with global batch "
                             f"{state.global_batch_size}, this run uses {fresh.global_batch_size}")
        if state.samples_seen != state.step * fresh.global_batch_size:
            raise RuntimeError(f"checkpoint data position {state.samples_seen} != step {state.step} × "
                               f"{fresh.global_batch_size}")
        if self.ema is not None:
            self.ema.load(point[0] / point[1])
        log.info("resumed from %s/%s at step %d", *point, state.step)
        self.state = state
        return state

    def due(self, step: int, stopping: bool = False) -> bool:
        cfg = self.cfg
        periodic = cfg.save_every > 0 and step % cfg.save_every == 0
        final = (step == cfg.max_steps or stopping) and cfg.save_at_end
        return (periodic or final) and not (self.guard is not None and self.guard.last_step_bad)

    def maybe_save(self, step: int, stopping: bool = False) -> Path | None:
        """After optimizer step `step` (collective when due); `stopping`: the run ends here (time budget)."""
        if not self.due(step, stopping):
            return None
        self.state.capture_rng(self.device)
        return save_checkpoint(self.engine, self.root, self.state, keep_last=self.cfg.keep_last,
                               is_main=self.is_main, run_info=self.run_info,
                               extra=self.ema.save if self.ema is not None else None)
