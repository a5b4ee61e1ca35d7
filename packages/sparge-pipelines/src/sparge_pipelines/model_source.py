"""What `sparge-generate --model` names: the sparge world model (shipped or a folder) or a Wan2.1 pipeline folder.

Standard library only (the CLI resolves `--model` before torch is imported, so its errors stay fast):
- absent, `world`, `world-teacher`: the shipped dense world teacher; `world-student`: the shipped distilled sparse
  student. The names are reserved: a folder called `world` is `./world`.
- a folder with `model_index.json`: a diffusers Wan2.1 pipeline, loaded as before;
- a folder whose `config.json` is a pixel-space `WanTransformer3DModel` (RGB in and out): a world model;
- anything else goes to the Wan loader, whose errors say what a Wan folder needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["VIDEO_SUFFIXES", "WORLD_NAMES", "WORLD_WEIGHTS_DIR", "WAN_ONLY", "ModelSource", "resolve_model",
           "shipped_world_models"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")  # containers imageio-ffmpeg writes with libx264
# GIF too for the world model: its videos are small (8x64x64 on a CPU) and loop in any browser or README; a Wan
# video (81x480x832) would make a GIF of hundreds of MB.
WORLD_VIDEO_SUFFIXES = (*VIDEO_SUFFIXES, ".gif")

WORLD_WEIGHTS_DIR = Path(__file__).parent / "world" / "weights"
# --model name -> folder under WORLD_WEIGHTS_DIR; "world" (and no --model) is the teacher: the model that ships first.
WORLD_NAMES = {"world": "teacher", "world-teacher": "teacher", "world-student": "student"}
# Options only a Wan pipeline reads: field -> (the value meaning "not given", why the world model refuses it).
WAN_ONLY: dict[str, tuple[Any, str]] = {
    "image": (None, "the world model has no image conditioning (text-to-video only)"),
    "negative_prompt": (None, "the world model's guidance contrasts with the empty caption, not a negative prompt"),
    "ulysses_degree": (1, "the world model (6.9 M params) runs on one device; Ulysses is for Wan pipelines"),
}


def shipped_world_models() -> dict[str, Path]:
    """The shipped world weight folders of this installation: name ("teacher", "student") -> folder."""
    return {p.name: p for p in sorted(WORLD_WEIGHTS_DIR.glob("*")) if (p / "config.json").is_file()}


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["world", "wan"]
    path: Path
    name: str  # as the user wrote it ("world" when --model was not given)
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # a world model's config.json

    @property
    def video_suffixes(self) -> tuple[str, ...]:
        return WORLD_VIDEO_SUFFIXES if self.kind == "world" else VIDEO_SUFFIXES

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.config.get("patch_size", (1, 1, 1)))

    def world_errors(self, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """(field, why) for each of `values` (GenerateConfig's fields, the CLI's arguments) this world model refuses:
        a Wan-only option, a size its patch does not divide (any other size the world renders is fine: `WorldSize`
        takes positive ints), a negative CFG scale. Wan's rules live in cli_types and GenerateConfig."""
        for name, (unset, why) in WAN_ONLY.items():
            if values.get(name, unset) != unset:
                yield name, why
        for name, patch in zip(("frames", "height", "width"), self.patch_size, strict=True):
            value = values.get(name)
            if value is not None and value % patch:
                yield name, (f"must be a multiple of {patch} (the world model's "
                             f"{'x'.join(map(str, self.patch_size))} patch), got {value}")
        guidance = values.get("guidance")
        if guidance is not None and not guidance >= 0:
            yield "guidance", f"the world sampler's CFG scale must be >= 0, got {guidance}"


def _shipped_names() -> str:
    shipped = shipped_world_models()
    names = [n for n, folder in WORLD_NAMES.items() if folder in shipped]
    return ", ".join(names) if names else "none"


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def resolve_model(value: str | None) -> ModelSource:
    """The model `--model value` names (None: the shipped world teacher). Raises FileNotFoundError for a shipped
    name this installation lacks and ValueError for a Wan transformer folder given instead of its pipeline."""
    name = "world" if value is None else value
    if name in WORLD_NAMES:
        folder = shipped_world_models().get(WORLD_NAMES[name])
        if folder is None:
            given = f"--model {name!r}" if value is not None else "no --model: the default world teacher"
            raise FileNotFoundError(f"{given} is not in this installation (shipped world models: {_shipped_names()});"
                                    " pass --model with a shipped name, a world model folder or a Wan2.1 pipeline "
                                    "folder")
        return ModelSource("world", folder, name, _read_config(folder) or {})
    path = Path(name).expanduser()
    if (path / "model_index.json").is_file():
        return ModelSource("wan", path, name)
    config = _read_config(path)
    if config is not None and config.get("_class_name") == "WanTransformer3DModel":
        if config.get("in_channels") == config.get("out_channels") == 3:
            return ModelSource("world", path, name, config)
        raise ValueError(f"--model {name}: a WanTransformer3DModel on {config.get('in_channels')} latent channels, "
                         "not a (pixel-space, RGB) world model; for Wan2.1 pass the pipeline folder, the one with "
                         "model_index.json")
    return ModelSource("wan", path, name)
