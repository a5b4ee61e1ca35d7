"""Start-up checks of `fit`, before any model is built: problems found here cost seconds, not a failed load.

- `check_model_fields(cfg)` (config load): fields that depend on the architecture, e.g. sparge.dense_layers,
  parallel.sequence_parallel_size (it must divide the attention heads).
- `check_resume(cfg, resume_point)`: a checkpoint written for another architecture / ZeRO stage is named with
  what differs (the manifest of the checkpoint, else the output_dir's config.yaml of the run that wrote it).
- `check_data(cfg, dataset)`: the data's latent channels, patch divisibility and text width against the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig

__all__ = ["architecture", "check_model_fields", "check_resume", "check_data", "run_info"]

# Keys of WanTransformer3DModel's config that do not change the parameters' shapes or meaning.
_IGNORED_ARCH_KEYS = {"_class_name", "_diffusers_version", "_name_or_path"}


def _pretrained_config(path: str) -> dict[str, Any] | None:
    for candidate in (Path(path), Path(path) / "transformer"):
        cfg = candidate / "config.json"
        if cfg.is_file():
            try:
                raw = json.loads(cfg.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError("model.pretrained", f"{cfg} is not valid JSON ({exc})") from None
            if raw.get("_class_name") == "WanTransformer3DModel":
                return raw
    return None


def architecture(model: Any) -> dict[str, Any] | None:
    """The transformer's config as plain JSON values (tuples as lists), from a ModelConfig or its dict form;
    None when it cannot be resolved (a pretrained folder that is gone)."""
    from .presets import WAN_PRESETS

    get = model.get if isinstance(model, dict) else lambda k, d=None: getattr(model, k, d)
    if get("preset") is not None:
        raw = WAN_PRESETS.get(get("preset"))
    elif get("pretrained") is not None:
        raw = _pretrained_config(get("pretrained"))
    else:
        return None
    if raw is None:
        return None
    return {k: v for k, v in json.loads(json.dumps(raw)).items() if k not in _IGNORED_ARCH_KEYS}


def check_model_fields(cfg: RunConfig) -> None:
    """Config-load checks against the architecture (skipped where it cannot be read; model.* reports that)."""
    arch = architecture(cfg.model)
    if arch is None:
        return
    layers = arch.get("num_layers")
    bad = [i for i in cfg.sparge.dense_layers if layers is not None and i >= layers]
    if bad:
        raise ConfigError("sparge.dense_layers", f"{bad} out of range: the model has {layers} blocks "
                          f"(indices 0..{layers - 1})")
    heads, sp = arch.get("num_attention_heads"), cfg.parallel.sequence_parallel_size
    if heads is not None and heads % sp:
        raise ConfigError("parallel.sequence_parallel_size", f"{sp} does not divide the model's {heads} attention "
                          f"heads: under Ulysses each rank of a group attends over heads/{sp} heads of the whole "
                          f"sequence; use a divisor of {heads}")


def run_info(cfg: RunConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: stored in its manifest."""
    return {"architecture": architecture(cfg.model), "zero_stage": cfg.deepspeed.zero_stage}


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) & set(current))  # a key only one side spells out is a default: not a difference
    return [f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now" for k in keys if saved[k] != current[k]]


def check_resume(cfg: RunConfig, resume_point: tuple[Path, str] | None) -> None:
    """Raise ConfigError naming what differs between the checkpoint's run and this one."""
    if resume_point is None:
        return
    from .checkpoint import read_manifest

    folder = resume_point[0] / resume_point[1]
    saved = (read_manifest(folder) or {}).get("run")
    if not saved:  # a checkpoint without a manifest: the config.yaml its run left next to it
        config_yaml = resume_point[0].parent / "config.yaml"
        if not config_yaml.is_file():
            return
        try:
            old = yaml.safe_load(config_yaml.read_text()) or {}
        except yaml.YAMLError:
            return
        saved = {"architecture": architecture(old.get("model") or {}),
                 "zero_stage": (old.get("deepspeed") or {}).get("zero_stage")}
    current = run_info(cfg)
    hint = (f"resuming {folder} needs the same model; use a new train.output_dir, or train.resume=none to start "
            "over (the old checkpoints are then rotated out)")
    if saved.get("architecture") and current["architecture"]:
        diffs = _differences(saved["architecture"], current["architecture"])
        if diffs:
            raise ConfigError("model", f"the checkpoint was written by a different model: {'; '.join(diffs)} "
                              f"— {hint}")
    if saved.get("zero_stage") is not None and saved["zero_stage"] != current["zero_stage"]:
        raise ConfigError("deepspeed.zero_stage", f"the checkpoint {folder} was written with ZeRO stage "
                          f"{saved['zero_stage']}, this run uses {current['zero_stage']} (DeepSpeed cannot load "
                          "one stage's partitions into another)")


def check_data(cfg: RunConfig, dataset: Any, arch: dict[str, Any]) -> None:
    """The first sample's latents (C, F, H, W) and text embeddings (T, D) against the model's in_channels,
    patch_size and text_dim; the error names the data field to change."""
    sample = dataset[0]
    c, f, h, w = sample["latents"].shape
    d = sample["text_embeds"].shape[-1]
    synthetic = cfg.data.source == "synthetic"
    where = "data.synthetic." if synthetic else f"data.path ({cfg.data.path}): "

    def field(name: str) -> str:
        return f"{where}{name}" if synthetic else f"{where}{name} of the prepared latents"

    if c != arch["in_channels"]:
        raise ConfigError(field("latent_channels"), f"the data has {c} latent channels but the model takes "
                          f"in_channels={arch['in_channels']}")
    if d != arch["text_dim"]:
        raise ConfigError(field("text_dim"), f"the data's text embeddings are {d} wide but the model takes "
                          f"text_dim={arch['text_dim']}")
    pt, ph, pw = arch.get("patch_size", (1, 2, 2))
    for name, size, patch in (("latent_frames", f, pt), ("latent_height", h, ph), ("latent_width", w, pw)):
        if size % patch:
            raise ConfigError(field(name), f"{size} is not a multiple of the model's patch size {patch} "
                              f"(patch_size={list(arch['patch_size'])})")
    tokens, sp = (f // pt) * (h // ph) * (w // pw), cfg.parallel.sequence_parallel_size
    if tokens % sp:  # diffusers splits the sequence in equal parts
        raise ConfigError("parallel.sequence_parallel_size", f"{sp} does not divide the {tokens} tokens of the "
                          f"data's {f}x{h}x{w} latents: every rank of a group takes tokens/{sp} of them")
