"""A small video classifier for the sparge world, trained on the generator's own labels: caption accuracy of
generated videos and features for a Frechet/KID distance, with no downloaded network.

Why its shape: a caption binds a digit and a direction to a colour ("a red 3 moving left and a blue 7 moving up"),
so a pooled bag of features would mix the two objects' attributes. The classifier instead pools one slot per colour
(a learned attention map over (t, h, w) per colour) and reads present / digit / direction from that colour's slot;
the background comes from a global average. A learned position embedding lets the direction head tell the first
frames' motion from the reversed motion after a bounce off the frame's edge. Every input size of the world is
resized to one internal size (default 8x48x48), so one classifier scores the full 16x96x96 videos and the CPU demo's
8x64x64 alike.

Outputs (logits) per video: ``present`` (B, 6), ``digit`` (B, 6, 10) and ``direction`` (B, 6, 4) per colour (the
last two meaningful only where that colour is present), ``background`` (B, 5). Colours, digits, directions and
backgrounds are indexed in the order of `vocab.COLOURS`, `DIGITS`, `DIRECTIONS`, `BACKGROUNDS`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import WEIGHTS_DIR
from .render import SpargeWorld, WorldSize
from .vocab import BACKGROUNDS, COLOURS, DIGITS, DIRECTIONS, Caption

__all__ = ["CLASSIFIER_DIR", "ClassifierConfig", "WorldClassifier", "caption_accuracy", "caption_labels",
           "evaluate_classifier", "features", "load_classifier", "predict", "save_classifier", "train_classifier"]

# The shipped classifier. Its files are not named config.json so that `model.shipped_models()` (diffusers folders
# of world transformers) does not take this folder for one.
CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"
_WEIGHTS_FILE = "classifier.safetensors"
_CONFIG_FILE = "classifier.json"

_COLOURS = tuple(COLOURS)
_DIRECTIONS = tuple(DIRECTIONS)
_COLOUR_ID = {c: i for i, c in enumerate(_COLOURS)}
_DIGIT_ID = {d: i for i, d in enumerate(DIGITS)}
_DIRECTION_ID = {d: i for i, d in enumerate(_DIRECTIONS)}
_BACKGROUND_ID = {b: i for i, b in enumerate(BACKGROUNDS)}
ATTRIBUTES = ("colour", "digit", "direction", "background", "all")
# Sizes the classifier trains on by default: the full world and the CPU demo's.
DEFAULT_SIZES = (WorldSize(16, 96, 96), WorldSize(8, 64, 64))


@dataclass(frozen=True)
class ClassifierConfig:
    frames: int = 8  # internal size every input is resized to
    height: int = 48
    width: int = 48
    channels: tuple[int, int, int, int] = (16, 32, 64, 96)
    hidden: int = 64  # per-slot (and background) width: the features are (1 + colours) * hidden
    training: dict[str, Any] = field(default_factory=dict, compare=False)  # how it was trained and its accuracy

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height, width: must be multiples of 8 (three stride-2 stages), got "
                             f"{self.height}x{self.width}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"channels: four positive widths, got {self.channels!r}")


class WorldClassifier(nn.Module):
    """Videos (B, 3, F, H, W) in [-1, 1], any F, H, W -> dict of logits (see the module docstring)."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        c0, c1, c2, c3 = config.channels
        n = len(_COLOURS)
        # A 3-D stem at full internal resolution sees motion directly (temporal x spatial gradients), then
        # per-frame spatial convolutions with temporal convolutions between them: (2+1)-D, cheap on a CPU.
        self.stem = nn.Conv3d(3, c0, 3, padding=1)
        self.s1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.s2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.t2 = nn.Conv3d(c2, c2, (3, 1, 1), padding=(1, 0, 0))
        self.s3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.t3 = nn.Conv3d(c3, c3, (3, 1, 1), padding=(1, 0, 0))
        # BatchNorm, not GroupNorm: per-sample normalisation would also remove the per-video feature means that the
        # background head reads (its mean-pooled features came out nearly constant across videos with GroupNorm).
        self.norms = nn.ModuleList(nn.BatchNorm3d(c) for c in (c0, c1, c2, c2, c3, c3))
        self.position = nn.Parameter(torch.zeros(1, c3, config.frames, config.height // 8, config.width // 8))
        self.slot_logits = nn.Conv3d(c3, n, 1)  # one attention map per colour
        self.slot_hidden = nn.Parameter(torch.randn(n, c3, config.hidden) / math.sqrt(c3))
        self.slot_bias = nn.Parameter(torch.zeros(n, config.hidden))
        outputs = 1 + len(DIGITS) + len(_DIRECTIONS)
        self.slot_out = nn.Parameter(torch.randn(n, config.hidden, outputs) / math.sqrt(config.hidden))
        self.slot_out_bias = nn.Parameter(torch.zeros(n, outputs))
        self.bg_hidden = nn.Linear(c3, config.hidden)
        self.bg_out = nn.Linear(config.hidden, len(BACKGROUNDS))

    def resize(self, videos: torch.Tensor) -> torch.Tensor:
        """To the internal size: area averaging when shrinking every axis (no aliasing), else trilinear."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"videos: expected (B, 3, F, H, W), got {tuple(videos.shape)}")
        cfg = self.config
        target = (cfg.frames, cfg.height, cfg.width)
        if tuple(videos.shape[2:]) == target:
            return videos
        shrink = all(s >= t for s, t in zip(videos.shape[2:], target))
        if shrink:
            return F.interpolate(videos, size=target, mode="area")
        return F.interpolate(videos, size=target, mode="trilinear", align_corners=False)

    def _per_frame(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = conv(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.reshape(b, f, *y.shape[1:]).transpose(1, 2)

    def hidden(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate activations: background (B, hidden) and per-colour slots (B, colours, hidden)."""
        param = self.stem.weight
        x = self.resize(videos.to(device=param.device, dtype=param.dtype))
        n = self.norms
        x = F.relu(n[0](self.stem(x)))
        x = F.relu(n[1](self._per_frame(self.s1, x)))
        x = F.relu(n[2](self._per_frame(self.s2, x)))
        x = x + F.relu(n[3](self.t2(x)))
        x = F.relu(n[4](self._per_frame(self.s3, x)))
        x = x + F.relu(n[5](self.t3(x)))
        x = x + self.position
        feat = x.flatten(2)  # (B, C, positions)
        attn = self.slot_logits(x).flatten(2).softmax(dim=-1)  # (B, colours, positions)
        slots = torch.einsum("bnp,bcp->bnc", attn, feat)
        slot_hidden = F.relu(torch.einsum("bnc,nch->bnh", slots, self.slot_hidden) + self.slot_bias)
        bg_hidden = F.relu(self.bg_hidden(feat.mean(dim=-1)))
        return bg_hidden, slot_hidden

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        bg_hidden, slot_hidden = self.hidden(videos)
        out = torch.einsum("bnh,nho->bno", slot_hidden, self.slot_out) + self.slot_out_bias
        nd = len(DIGITS)
        return {"present": out[..., 0], "digit": out[..., 1:1 + nd], "direction": out[..., 1 + nd:],
                "background": self.bg_out(bg_hidden)}


# ---------------------------------------------------------------------------------------------------------------
# labels, predictions, scoring


def caption_labels(captions: Sequence[Caption], *, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Targets from captions: present (B, 6) float, digit / direction (B, 6) long (-100 where the colour is
    absent: ignored by cross-entropy), background (B,) long."""
    b, n = len(captions), len(_COLOURS)
    present = torch.zeros(b, n)
    digit = torch.full((b, n), -100, dtype=torch.long)
    direction = torch.full((b, n), -100, dtype=torch.long)
    background = torch.zeros(b, dtype=torch.long)
    for i, caption in enumerate(captions):
        if not isinstance(caption, Caption):
            raise TypeError(f"captions[{i}]: expected a Caption, got {type(caption).__name__}")
        background[i] = _BACKGROUND_ID[caption.background]
        for obj in caption.objects:
            c = _COLOUR_ID[obj.colour]
            present[i, c] = 1.0
            digit[i, c] = _DIGIT_ID[obj.digit]
            direction[i, c] = _DIRECTION_ID[obj.direction]
    out = {"present": present, "digit": digit, "direction": direction, "background": background}
    return {k: v.to(device) for k, v in out.items()}


def _check_videos(videos: torch.Tensor) -> None:
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] != 3:
        shape = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"videos: expected a (B, 3, F, H, W) tensor in [-1, 1], got {shape}")


def _device_of(classifier: nn.Module) -> torch.device:
    param = next(iter(classifier.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict(classifier: nn.Module, videos: torch.Tensor, *, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Hard predictions (CPU): present (B, 6) bool (logit > 0), digit / direction (B, 6) long (argmax per colour,
    whether or not present), background (B,) long. `classifier` is any module returning the logits dict."""
    _check_videos(videos)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    was_training = classifier.training
    classifier.eval()
    device = _device_of(classifier)
    parts: dict[str, list[torch.Tensor]] = {"present": [], "digit": [], "direction": [], "background": []}
    try:
        for start in range(0, videos.shape[0], batch_size):
            logits = classifier(videos[start:start + batch_size].to(device))
            parts["present"].append((logits["present"] > 0).cpu())
            parts["digit"].append(logits["digit"].argmax(-1).cpu())
            parts["direction"].append(logits["direction"].argmax(-1).cpu())
            parts["background"].append(logits["background"].argmax(-1).cpu())
    finally:
        classifier.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def caption_accuracy(classifier: nn.Module, videos: torch.Tensor, captions: Sequence[Caption], *,
                     batch_size: int = 64) -> dict[str, float]:
    """How often the classifier reads each caption attribute off its video (generated or real).

    colour: the caption's colours are predicted present and no other colour is (per video); digit, direction: per
    object of the caption, the digit / direction read from that colour's slot; background: per video; all: per
    video, every one of the above right. Also returns the counts ("videos", "objects").
    """
    _check_videos(videos)
    if len(captions) != videos.shape[0]:
        raise ValueError(f"captions: {len(captions)} captions for {videos.shape[0]} videos")
    if not captions:
        raise ValueError("captions: empty (nothing to score)")
    pred = predict(classifier, videos, batch_size=batch_size)
    labels = caption_labels(captions)
    present = labels["present"].bool()
    colour_ok = (pred["present"] == present).all(dim=1)
    digit_ok = (pred["digit"] == labels["digit"]) & present
    direction_ok = (pred["direction"] == labels["direction"]) & present
    objects = present.sum(dim=1)
    background_ok = pred["background"] == labels["background"]
    all_ok = (colour_ok & (digit_ok.sum(1) == objects) & (direction_ok.sum(1) == objects) & background_ok)
    n_obj = int(objects.sum())
    return {"colour": float(colour_ok.float().mean()), "digit": float(digit_ok.sum()) / n_obj,
            "direction": float(direction_ok.sum()) / n_obj, "background": float(background_ok.float().mean()),
            "all": float(all_ok.float().mean()), "videos": int(videos.shape[0]), "objects": n_obj}


@torch.no_grad()
def features(classifier: WorldClassifier, videos: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """(B, (1 + colours) * hidden) float32 CPU penultimate features (background and per-colour slot activations,
    concatenated) for `metrics.frechet_distance` / `metrics.kid` against real world videos."""
    _check_videos(videos)
    if not hasattr(classifier, "hidden"):
        raise TypeError(f"classifier: expected a WorldClassifier (with .hidden), got {type(classifier).__name__}")
    was_training = classifier.training
    classifier.eval()
    device = _device_of(classifier)
    out = []
    try:
        for start in range(0, videos.shape[0], batch_size):
            bg, slots = classifier.hidden(videos[start:start + batch_size].to(device))
            out.append(torch.cat([bg, slots.flatten(1)], dim=1).float().cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------------
# training


def _loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    n = len(_COLOURS)
    present = F.binary_cross_entropy_with_logits(logits["present"], labels["present"])
    digit = F.cross_entropy(logits["digit"].reshape(-1, len(DIGITS)), labels["digit"].reshape(-1))
    direction = F.cross_entropy(logits["direction"].reshape(-1, len(_DIRECTIONS)), labels["direction"].reshape(-1))
    background = F.cross_entropy(logits["background"], labels["background"])
    return n * present + digit + direction + background


def _held_out(split: str, seed: int) -> tuple[SpargeWorld, int]:
    """The world and first index of held-out scenes: the heldout split for the base distribution; the shifted
    split's indices from 2^23 up (training draws below that)."""
    if split == "base":
        return SpargeWorld(split="heldout", seed=seed), 0
    if split == "shifted":
        return SpargeWorld(split="shifted", seed=seed), 1 << 23
    raise ValueError(f"split: held-out accuracy is measured on 'base' or 'shifted', got {split!r}")


def evaluate_classifier(classifier: nn.Module, *, split: str = "base", size: WorldSize = DEFAULT_SIZES[0],
                        count: int = 512, seed: int = 0, batch_size: int = 64,
                        device: torch.device | str | None = None) -> dict[str, float]:
    """`caption_accuracy` on `count` held-out real videos of `split` ("base": the heldout split; "shifted")."""
    if count < 1:
        raise ValueError(f"count: must be >= 1, got {count}")
    world, first = _held_out(split, seed)
    device = _device_of(classifier) if device is None else torch.device(device)
    scores: dict[str, float] = {}
    totals = {k: 0.0 for k in ATTRIBUTES}
    videos_n = objects_n = 0
    for start in range(0, count, batch_size):
        idx = list(range(first + start, first + min(count, start + batch_size)))
        s = caption_accuracy(classifier, world.videos(idx, size=size, device=device), world.captions(idx),
                             batch_size=batch_size)
        for k in ATTRIBUTES:
            totals[k] += s[k] * (s["objects"] if k in ("digit", "direction") else s["videos"])
        videos_n += s["videos"]
        objects_n += s["objects"]
    for k in ATTRIBUTES:
        scores[k] = totals[k] / (objects_n if k in ("digit", "direction") else videos_n)
    scores.update(videos=videos_n, objects=objects_n)
    return scores


def train_classifier(steps: int = 3000, batch: int = 32, device: torch.device | str = "cpu", seed: int = 0, *,
                     sizes: Sequence[WorldSize] = DEFAULT_SIZES, lr: float = 4e-3,
                     config: ClassifierConfig = ClassifierConfig(), noise_std: float = 0.08,
                     eval_count: int = 256, time_budget_s: float | None = None,
                     log: Callable[[str], None] | None = print, log_every: int = 100) -> WorldClassifier:
    """Train a `WorldClassifier` on videos rendered on the fly: each step renders half a batch from the base split
    and half from the shifted one (so both distributions score), at the sizes of `sizes` in turn, with Gaussian
    pixel noise of a random std in [0, noise_std] (generated videos are not clean). AdamW with a cosine decay.

    Returns the model (eval mode); `model.config.training` holds the settings and the held-out accuracy per split
    and size (`evaluate_classifier`, `eval_count` videos each). `time_budget_s` stops early (the schedule is then
    cut short, not compressed).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: must be a positive int, got {steps!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2 or batch % 2:
        raise ValueError(f"batch: must be an even int >= 2 (half base, half shifted), got {batch!r}")
    sizes = tuple(sizes)
    if not sizes or not all(isinstance(s, WorldSize) for s in sizes):
        raise ValueError(f"sizes: a non-empty sequence of WorldSize, got {sizes!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std: must be >= 0, got {noise_std!r}")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = WorldClassifier(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(100, steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    worlds = (SpargeWorld(split="base", seed=seed), SpargeWorld(split="shifted", seed=seed))
    gen = torch.Generator().manual_seed(seed)
    # Pixel noise is drawn where the batch lives (a CPU generator would make a GPU run copy every noise tensor);
    # on the CPU it is the same generator as the indices, so CPU runs reproduce exactly.
    noise_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    half = batch // 2
    t0 = time.perf_counter()
    running, since, done = 0.0, 0, 0
    model.train()
    for step in range(steps):
        size = sizes[step % len(sizes)]
        videos, captions = [], []
        for world in worlds:
            idx = torch.randint(0, 1 << 23, (half,), generator=gen).tolist()
            videos.append(world.videos(idx, size=size, device=device))
            captions += world.captions(idx)
        x = torch.cat(videos)
        if noise_std > 0:
            std = torch.rand(x.shape[0], 1, 1, 1, 1, generator=gen) * noise_std
            x = x + std.to(device) * torch.randn(x.shape, generator=noise_gen, device=device)
        loss = _loss(model(x), caption_labels(captions, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running, since, done = running + loss.item(), since + 1, step + 1
        if log is not None and (done % log_every == 0 or done == steps):
            log(f"step {done}/{steps} loss {running / since:.4f} {time.perf_counter() - t0:.0f}s")
            running, since = 0.0, 0
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            if log is not None:
                log(f"time budget {time_budget_s:.0f}s reached at step {done}")
            break
    train_s = time.perf_counter() - t0
    model.eval()
    accuracy = {}
    for split in ("base", "shifted"):
        for size in sizes:
            key = f"{split}/{size.frames}x{size.height}x{size.width}"
            accuracy[key] = evaluate_classifier(model, split=split, size=size, count=eval_count, seed=seed)
            if log is not None:
                log(f"held-out {key}: " + " ".join(f"{k} {accuracy[key][k]:.3f}" for k in ATTRIBUTES))
    training = dict(steps=done, steps_planned=steps, batch=batch, seed=seed, lr=lr, noise_std=noise_std,
                    sizes=[list(asdict(s).values()) for s in sizes], train_seconds=round(train_s, 1),
                    device=str(device), threads=torch.get_num_threads(), heldout=accuracy)
    model.config = ClassifierConfig(**{**asdict(config), "training": training})
    return model


# ---------------------------------------------------------------------------------------------------------------
# save / load


def save_classifier(classifier: WorldClassifier, path: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write `classifier.safetensors` (weights in `dtype`: float16 keeps the shipped file small) and
    `classifier.json` (architecture and training report) into the folder `path`; returns the folder."""
    from safetensors.torch import save_file

    if not isinstance(classifier, WorldClassifier):
        raise TypeError(f"classifier: expected a WorldClassifier, got {type(classifier).__name__}")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype: float16, bfloat16 or float32, got {dtype}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, str(path / _WEIGHTS_FILE), metadata={"format": "pt"})
    (path / _CONFIG_FILE).write_text(json.dumps(asdict(classifier.config), indent=1) + "\n")
    return path


def load_classifier(path: str | Path | None = None, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> WorldClassifier:
    """A saved classifier (eval mode, no gradients); `path=None` loads the shipped one (`CLASSIFIER_DIR`)."""
    from safetensors.torch import load_file

    folder = CLASSIFIER_DIR if path is None else Path(path)
    weights, cfg = folder / _WEIGHTS_FILE, folder / _CONFIG_FILE
    if not weights.is_file() or not cfg.is_file():
        what = "the shipped classifier" if path is None else repr(str(path))
        raise FileNotFoundError(f"path: {what} needs {_WEIGHTS_FILE} and {_CONFIG_FILE} in {folder}; train one with "
                                "tools/world/train_classifier.py")
    config = ClassifierConfig(**json.loads(cfg.read_text()))
    model = WorldClassifier(config)
    model.load_state_dict({k: v.to(dtype) for k, v in load_file(str(weights)).items()})
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
