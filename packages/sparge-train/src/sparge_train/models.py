"""Student and teacher construction: a WanTransformer3DModel (random preset or diffusers checkpoint), its frozen
full-attention copy, and sparge attention on the student.

Under ZeRO-3 both are built inside `deepspeed.zero.Init`, so no rank ever holds a full copy (14B fp32 would be
56 GB per process): a checkpoint is streamed in module by module by rank 0, and the teacher takes the student's
parameter partitions one to one (same shapes, same world → same partitioning).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, SpargeConfig
from .presets import wan_config

__all__ = [
    "StudentTeacher",
    "resolve_transformer_dir",
    "transformer_arch",
    "safetensors_files",
    "build_student_teacher",
    "install_sparge",
]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


@dataclass
class StudentTeacher:
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    arch: dict[str, Any]
    zero3_student: bool
    zero3_teacher: bool


def resolve_transformer_dir(path: str | Path, field: str = "model.pretrained") -> Path:
    """A WanTransformer3DModel folder: `path` itself or `path/transformer` (a pipeline folder)."""
    path = Path(path)
    for candidate in (path, path / "transformer"):
        cfg = candidate / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "WanTransformer3DModel":
            return candidate
    raise FileNotFoundError(f"{field}: no WanTransformer3DModel config.json in {path} or {path}/transformer")


def transformer_arch(cfg: RunConfig) -> dict[str, Any]:
    """Constructor kwargs of WanTransformer3DModel for the configured model."""
    if cfg.model.preset is not None:
        return wan_config(cfg.model.preset)
    from diffusers import WanTransformer3DModel

    raw = json.loads((resolve_transformer_dir(cfg.model.pretrained) / "config.json").read_text())
    return WanTransformer3DModel.extract_init_dict(raw)[0]


def safetensors_files(model_dir: Path, field: str = "model.pretrained") -> list[Path]:
    index = model_dir / WEIGHTS_INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{field}: {model_dir} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME} "
                            "(only safetensors checkpoints are loaded)")


def _new_model(arch: dict[str, Any], seed: int) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**arch)


def _checkpoint_keys(model: torch.nn.Module, files: list[Path], field: str) -> dict[str, Path]:
    """Which file holds each tensor; every parameter of `model` must be there."""
    from safetensors import safe_open

    key_to_file: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            key_to_file.update(dict.fromkeys(h.keys(), f))
    expected = {name for name, _ in model.named_parameters()}
    missing = sorted(expected - key_to_file.keys())
    if missing:
        raise KeyError(f"{field}: checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    unexpected = sorted(k for k in key_to_file.keys() - expected if "norm_added_q" not in k)
    if unexpected:
        log.warning("checkpoint has %d tensors the model does not use, e.g. %s", len(unexpected), unexpected[:3])
    return key_to_file


def _check_shape(field: str, key: str, src: torch.Tensor, p: torch.Tensor) -> None:
    if tuple(src.shape) != tuple(p.shape):
        raise ValueError(f"{field}: {key} has shape {tuple(src.shape)}, model expects {tuple(p.shape)}")


@torch.no_grad()
def _load_into(model: torch.nn.Module, files: list[Path], field: str) -> None:
    """A safetensors checkpoint into a plain (unpartitioned) model's parameters."""
    from safetensors import safe_open

    key_to_file = _checkpoint_keys(model, files, field)
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in files}
        for key, p in model.named_parameters():
            src = handles[key_to_file[key]].get_tensor(key)
            _check_shape(field, key, src, p)
            p.data.copy_(src.to(p.dtype))


def _load_into_zero3(model: torch.nn.Module, files: list[Path], rank: int, field: str = "model.pretrained") -> None:
    """Stream a safetensors checkpoint into a ZeRO-3 partitioned model: gather one module's parameters, let
    rank 0 fill them, re-partition (GatheredParameters(modifier_rank=0) broadcasts rank 0's values)."""
    import deepspeed
    from safetensors import safe_open

    key_to_file = _checkpoint_keys(model, files, field)
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in files} if rank == 0 else {}
        for module_name, module in model.named_modules():
            params = list(module.named_parameters(recurse=False))
            if not params:
                continue
            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
                if rank == 0:
                    for pname, p in params:
                        key = f"{module_name}.{pname}" if module_name else pname
                        src = handles[key_to_file[key]].get_tensor(key)
                        _check_shape(field, key, src, p)
                        p.data.copy_(src.to(p.dtype))


def _copy_partitions(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """dst ← src for two ZeRO-3 partitioned models of the same architecture on the same world."""
    src_params, dst_params = list(src.named_parameters()), list(dst.named_parameters())
    if [n for n, _ in src_params] != [n for n, _ in dst_params]:
        raise RuntimeError("teacher and student parameter names differ")
    for (name, ps), (_, pt) in zip(src_params, dst_params, strict=True):
        if ps.ds_shape != pt.ds_shape or ps.ds_tensor.shape != pt.ds_tensor.shape:
            raise RuntimeError(f"{name}: student/teacher partitions differ ({ps.ds_tensor.shape} vs "
                               f"{pt.ds_tensor.shape})")
        pt.ds_tensor.data.copy_(ps.ds_tensor.data)


def _copy_gathered(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """dst (plain) ← src (ZeRO-3 partitioned), one parameter at a time."""
    import deepspeed

    dst_params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            dst_params[name].data.copy_(p.data)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    model.eval()
    return model


def build_student_teacher(cfg: RunConfig, *, student_ds: dict, teacher_ds: dict | None, sharded_teacher: bool,
                          rank: int, dtype: torch.dtype, mpu: Any = None) -> StudentTeacher:
    """Both models with identical weights; the student trainable, the teacher frozen (or None when the loss
    does not use it). Sparge attention is installed separately (install_sparge). `mpu`: DeepSpeed's sequence
    parallel groups (sequence_parallel.py), which zero.Init needs to read the batch sizes of the configs."""
    from diffusers import WanTransformer3DModel

    arch = transformer_arch(cfg)
    pretrained = resolve_transformer_dir(cfg.model.pretrained) if cfg.model.pretrained else None
    # the student's own start (an earlier export); loaded after the teacher took the pretrained weights
    student_init = safetensors_files(resolve_transformer_dir(cfg.model.student_init, "model.student_init"),
                                     "model.student_init") if cfg.model.student_init else None
    need_teacher = cfg.loss.needs_teacher
    if cfg.deepspeed.zero_stage == 3:
        import deepspeed

        # No dtype= here: zero.Init takes it from the config's bf16 flag (an explicit dtype is overridden by the
        # accelerator's preference in DeepSpeed 0.19 — bf16 even for fp32 on the CPU).
        with deepspeed.zero.Init(config_dict_or_path=student_ds, mpu=mpu):
            student = _new_model(arch, cfg.model.init_seed)
        if pretrained is not None:
            _load_into_zero3(student, safetensors_files(pretrained), rank)
        teacher = None
        if need_teacher and sharded_teacher:
            with deepspeed.zero.Init(config_dict_or_path=teacher_ds, mpu=mpu):
                teacher = _new_model(arch, cfg.model.init_seed)
            _copy_partitions(student, teacher)
        elif need_teacher:
            teacher = _new_model(arch, cfg.model.init_seed)
            _copy_gathered(student, teacher)
        if student_init is not None:
            _load_into_zero3(student, student_init, rank, "model.student_init")
        return StudentTeacher(student, freeze(teacher) if teacher is not None else None, arch, True, sharded_teacher)

    if pretrained is not None:
        student = WanTransformer3DModel.from_pretrained(pretrained, torch_dtype=torch.float32)
    else:
        student = _new_model(arch, cfg.model.init_seed)
    teacher = freeze(copy.deepcopy(student)) if need_teacher else None
    if student_init is not None:
        _load_into(student, student_init, "model.student_init")
    return StudentTeacher(student, teacher, arch, False, False)


def install_sparge(student: torch.nn.Module, cfg: SpargeConfig) -> Any:
    """Swap the student's self-attention for sparge attention: `apply_sparge` with the section's config object."""
    from sparge_pipelines import apply_sparge

    return apply_sparge(student, cfg.pipeline_config())
