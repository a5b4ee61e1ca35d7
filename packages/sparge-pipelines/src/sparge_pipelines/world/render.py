"""The sparge world: procedural captioned videos, deterministic by (seed, split, index), rendered on any device.

Each video shows one or two coloured digits moving in a named direction and bouncing off the frame's edges, the
later one occluding the earlier, over a drifting textured background. Geometry is in units of the frame height,
so one scene renders at any resolution and frame count (the CPU main job uses a smaller size of the same world).
The "shifted" split draws other backgrounds and faster motion: fine-tuning data the teacher was not trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .vocab import (
    BACKGROUNDS,
    BASE_BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    MAX_OBJECTS,
    SHIFTED_BACKGROUNDS,
    Caption,
    ObjectCaption,
    encode_captions,
)

__all__ = ["SPLITS", "Scene", "SceneObject", "SpargeWorld", "WorldSize", "render_scenes", "sample_scene",
           "scene_for_caption"]

SPLITS = ("base", "shifted", "heldout")  # heldout: the base distribution from a disjoint seed stream
_SPLIT_ID = {"base": 0, "shifted": 1, "heldout": 2}

# 5x7 bitmap font, rows top to bottom.
_FONT = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
}
_GLYPHS = torch.tensor([[[float(c) for c in row] for row in _FONT[str(d)].split()] for d in range(10)])  # (10,7,5)
# Large, blocky glyphs: each font cell is about one 4x4 patch at 96x96 (a stroke the model must place, not a
# sub-patch line), and a digit stays legible at the classifier's 48x48.
GLYPH_HEIGHT = 0.34  # of the frame height
_GLYPH_EDGE = 3.0  # sharpening of the bilinear glyph: solid cells, edges a third of a cell wide
_SPEED = {"base": (0.018, 0.03), "shifted": (0.034, 0.048), "heldout": (0.018, 0.03)}  # frame heights per frame


@dataclass(frozen=True)
class WorldSize:
    frames: int = 16
    height: int = 96
    width: int = 96

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")


@dataclass(frozen=True)
class SceneObject:
    caption: ObjectCaption
    x: float  # centre at frame 0, frame heights
    y: float
    speed: float  # frame heights per frame along the caption's direction
    wobble: float  # small perpendicular drift, frame heights per frame


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]
    bg_low: tuple[float, float, float]
    bg_high: tuple[float, float, float]
    bg_period: float  # frame heights
    bg_angle: float
    bg_phase: float
    bg_drift: tuple[float, float]  # frame heights per frame
    bg_seed: int = 0  # the noise field of the noise backgrounds

    @property
    def caption(self) -> Caption:
        return Caption(self.background, tuple(o.caption for o in self.objects))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_ID:
        raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise IndexError(f"index: must be >= 0, got {index}")
    return np.random.default_rng([int(seed), _SPLIT_ID[split], int(index)])


def _scene_layout(rng: np.random.Generator, split: str, background: str,
                  objects: tuple[ObjectCaption, ...]) -> Scene:
    """The parts of a scene a caption does not name: positions, speeds, background tints and motion."""
    lo, hi = _SPEED[split]
    placed = []
    for obj in objects:
        placed.append(SceneObject(caption=obj, x=float(rng.uniform(0.2, 0.8)), y=float(rng.uniform(0.2, 0.8)),
                                  speed=float(rng.uniform(lo, hi)), wobble=float(rng.uniform(-0.004, 0.004))))
    grey = float(rng.uniform(-0.75, -0.45))
    tint = rng.uniform(-0.12, 0.12, size=3)
    low = tuple(float(grey + t) for t in tint)
    contrast = float(rng.uniform(0.25, 0.4))
    high = tuple(v + contrast for v in low)
    drift_angle = float(rng.uniform(0, 2 * math.pi))
    drift = float(rng.uniform(0.004, 0.012))
    return Scene(background=background, objects=tuple(placed), bg_low=low, bg_high=high,
                 bg_period=float(rng.uniform(0.12, 0.22)), bg_angle=float(rng.uniform(0, math.pi)),
                 bg_phase=float(rng.uniform(0, 2 * math.pi)),
                 bg_drift=(drift * math.cos(drift_angle), drift * math.sin(drift_angle)),
                 bg_seed=int(rng.integers(2**31)))


def sample_scene(index: int, *, split: str = "base", seed: int = 0) -> Scene:
    """Scene `index` of `split`: the same on every machine and run."""
    rng = _rng(seed, split, index)
    backgrounds = SHIFTED_BACKGROUNDS if split == "shifted" else BASE_BACKGROUNDS
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    count = 1 if rng.random() < 0.4 else MAX_OBJECTS
    colours = list(COLOURS)
    picked = rng.choice(len(colours), size=count, replace=False)
    directions = list(DIRECTIONS)
    objects = tuple(ObjectCaption(colour=colours[int(c)], digit=str(int(rng.integers(10))),
                                  direction=directions[int(rng.integers(len(directions)))]) for c in picked)
    return _scene_layout(rng, split, background, objects)


def scene_for_caption(caption: Caption, *, seed: int = 0, split: str = "base") -> Scene:
    """A scene showing `caption`, its unnamed parts (positions, speeds, tints) drawn from `seed`."""
    return _scene_layout(_rng(seed, split, 0), split, caption.background, caption.objects)


def _fold(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Reflect u into [lo, hi] (a bounce off both walls)."""
    span = hi - lo
    z = torch.remainder((u - lo) / span, 2.0)
    return lo + span * torch.where(z > 1.0, 2.0 - z, z)


_NOISE_CELLS = {"clouds": 3.0, "speckle": 14.0, "blotches": 5.0}  # noise grid cells per frame height


def _noise_field(seed: int, cells: float) -> torch.Tensor:
    """A scene's value-noise grid (1, gh, gw) on the CPU, large enough to cover the frame at every drift position."""
    g = torch.Generator().manual_seed(seed)
    side = int(math.ceil(cells * 2)) + 2
    return torch.rand(1, side, side, generator=g)


def _backgrounds(kind: str, scenes: list[Scene], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Patterns in [0, 1] of `scenes` (all of background `kind`) at frame-height coordinates X, Y (n, F, H, W)."""
    n, f_, h_, w_ = X.shape
    if kind in _NOISE_CELLS:
        cells = _NOISE_CELLS[kind]
        fields = torch.stack([_noise_field(s.bg_seed, cells) for s in scenes]).to(X.device)  # (n, 1, g, g)
        side = fields.shape[-1]
        # frame-height coordinates -> the field's [-1, 1] (the field spans side / cells frame heights)
        grid = torch.stack([(X + 0.5) * cells / side * 2 - 1, (Y + 0.5) * cells / side * 2 - 1], dim=-1)
        v = F.grid_sample(fields, grid.view(n, f_ * h_, w_, 2), mode="bicubic", padding_mode="reflection",
                          align_corners=False).view(n, f_, h_, w_)
        if kind == "blotches":
            return torch.sigmoid(12.0 * (v - 0.5))
        return v.clamp(0, 1)
    params = torch.tensor([[2 * math.pi / s.bg_period, s.bg_phase] for s in scenes], device=X.device)
    w, phase = (params[:, i].view(n, 1, 1, 1) for i in range(2))
    if kind == "rings":
        pattern = torch.sin(w * torch.sqrt((X - 0.5) ** 2 + (Y - 0.5) ** 2) + phase)
    elif kind == "grid":
        pattern = (torch.cos(w * X + phase).abs() ** 12 + torch.cos(w * Y + phase).abs() ** 12) * 4.0 - 1.5
    else:
        raise ValueError(f"background: must be one of {BACKGROUNDS}, got {kind!r}")
    return torch.sigmoid(5.0 * pattern)


def render_scenes(scenes: list[Scene], size: WorldSize, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Videos (B, 3, F, H, W) in [-1, 1] of `scenes` at `size`.

    The whole batch is rendered at once (scenes grouped by background kind, objects by their place in the
    caption), so the cost is a few dozen tensor operations, not a few dozen per scene; each video is the same
    whichever batch it is rendered in.
    """
    device = torch.device(device)
    b_, f_, h_, w_ = len(scenes), size.frames, size.height, size.width
    aspect = w_ / h_
    t = torch.arange(f_, device=device, dtype=torch.float32).view(1, f_, 1, 1)
    xs = ((torch.arange(w_, device=device, dtype=torch.float32) + 0.5) / h_).view(1, 1, 1, w_)  # frame heights
    ys = ((torch.arange(h_, device=device, dtype=torch.float32) + 0.5) / h_).view(1, 1, h_, 1)
    scene_params = torch.tensor([[*s.bg_drift, *s.bg_low, *s.bg_high] for s in scenes], device=device).view(b_, 8)
    drift_x, drift_y = (scene_params[:, i].view(b_, 1, 1, 1) for i in range(2))
    X, Y = torch.broadcast_tensors(xs - drift_x * t, ys - drift_y * t)  # (B, F, H, W)
    pattern = torch.empty(b_, f_, h_, w_, device=device)
    for kind in sorted({s.background for s in scenes}):
        rows = [i for i, s in enumerate(scenes) if s.background == kind]
        index = torch.tensor(rows, device=device)
        pattern[index] = _backgrounds(kind, [scenes[i] for i in rows], X[index], Y[index])
    low = scene_params[:, 2:5].view(b_, 3, 1, 1, 1)
    high = scene_params[:, 5:8].view(b_, 3, 1, 1, 1)
    frames = low + (high - low) * pattern.unsqueeze(1)  # (B, 3, F, H, W)
    gh = GLYPH_HEIGHT
    gw = gh * 5 / 7
    glyphs = _GLYPHS.to(device)
    # Objects in caption order, the later drawn over the earlier: slot k of every scene that has a k-th object.
    for slot in range(max((len(s.objects) for s in scenes), default=0)):
        rows = [i for i, s in enumerate(scenes) if len(s.objects) > slot]
        objs = [scenes[i].objects[slot] for i in rows]
        n = len(rows)
        motion = []
        for o in objs:
            ux, uy = DIRECTIONS[o.caption.direction]
            motion.append([o.x * aspect, o.y, o.speed * ux - o.wobble * uy, o.speed * uy + o.wobble * ux,
                           *COLOURS[o.caption.colour]])
        m = torch.tensor(motion, device=device)
        x0, y0, vx, vy = (m[:, i].view(n, 1) for i in range(4))
        tf = t.view(1, f_)
        cx = _fold(x0 + vx * tf, torch.tensor(gw / 2 + 0.01), torch.tensor(aspect - gw / 2 - 0.01))  # (n, F)
        cy = _fold(y0 + vy * tf, torch.tensor(gh / 2 + 0.01), torch.tensor(1 - gh / 2 - 0.01))
        # grid_sample coordinates of every pixel in the glyph's box: [-1, 1] inside, zero padding outside
        gx = (xs - cx.view(n, f_, 1, 1)) / (gw / 2)
        gy = (ys - cy.view(n, f_, 1, 1)) / (gh / 2)
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1).view(n * f_, h_, w_, 2)
        digits = torch.tensor([int(o.caption.digit) for o in objs], device=device)
        glyph = glyphs[digits].view(n, 1, 1, 7, 5).expand(n, f_, 1, 7, 5).reshape(n * f_, 1, 7, 5)
        alpha = F.grid_sample(glyph, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # sharpened: solid cells, their edges where the bitmap changes
        alpha = ((alpha - 0.5) * _GLYPH_EDGE + 0.5).clamp(0, 1).view(n, 1, f_, h_, w_)
        colour = m[:, 4:7].view(n, 3, 1, 1, 1)
        index = torch.tensor(rows, device=device)
        frames[index] = frames[index] * (1 - alpha) + colour * alpha
    return frames.clamp_(-1, 1).to(dtype)


class SpargeWorld:
    """Indexable view of one split: `captions(indices)`, `videos(indices)`, `text(indices)`.

    Index i is an independent scene (there is no fixed dataset size; `num_samples` only bounds the index range
    so that samplers can shuffle).
    """

    def __init__(self, size: WorldSize = WorldSize(), *, split: str = "base", seed: int = 0,
                 num_samples: int = 1 << 24) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
        self.size = size
        self.split = split
        self.seed = seed
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range [0, {self.num_samples})")
        return sample_scene(index, split=self.split, seed=self.seed)

    def captions(self, indices: list[int]) -> list[Caption]:
        return [self.scene(i).caption for i in indices]

    def videos(self, indices: list[int], *, size: WorldSize | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return render_scenes([self.scene(i) for i in indices], size or self.size, device=device, dtype=dtype)

    def text(self, indices: list[int], *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return encode_captions(self.captions(indices), device=device, dtype=dtype)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One sample in sparge-train's dataset format (the video is the 'latent': a pixel-space model)."""
        return {"latents": self.videos([index])[0], "text_embeds": self.text([index])[0]}
