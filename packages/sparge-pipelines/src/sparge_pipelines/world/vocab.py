"""The sparge world's captions: a fixed vocabulary, a caption per scene, and its text embedding.

A caption names the background and up to `MAX_OBJECTS` objects (colour, digit, direction), e.g.
"a red 3 moving left and a blue 7 moving up on clouds". The text embedding the transformer reads is one token
per caption slot: a one-hot word plus a one-hot slot role (background, object 1 attribute, ...), so the model's
own `text_embedder` (a learned MLP) is the word embedding and cross-attention can bind each digit to its colour.
Missing objects are zero tokens, as WanPipeline zero-pads text; the all-zero embedding is the null caption (CFG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "BACKGROUNDS",
    "BASE_BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "DIGITS",
    "MAX_OBJECTS",
    "SHIFTED_BACKGROUNDS",
    "TEXT_DIM",
    "TEXT_TOKENS",
    "WORDS",
    "Caption",
    "ObjectCaption",
    "encode_captions",
    "parse_caption",
]

# name -> RGB in [-1, 1]
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -0.8, -0.8),
    "green": (-0.8, 1.0, -0.8),
    "blue": (-0.7, -0.5, 1.0),
    "yellow": (1.0, 1.0, -0.9),
    "magenta": (1.0, -0.8, 1.0),
    "cyan": (-0.8, 1.0, 1.0),
}
DIGITS = tuple(str(d) for d in range(10))
# name -> unit (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                              "down": (0.0, 1.0)}
# Base backgrounds are non-periodic noise fields unique to each scene: continuing one from frame to frame needs the
# same (drifted) place in the neighbouring frames, not any far-away period of a repeating pattern.
BASE_BACKGROUNDS = ("clouds", "speckle", "blotches")
SHIFTED_BACKGROUNDS = ("rings", "grid")  # periodic, only in the shifted split: data the teacher never saw
BACKGROUNDS = BASE_BACKGROUNDS + SHIFTED_BACKGROUNDS
MAX_OBJECTS = 2

WORDS: tuple[str, ...] = BACKGROUNDS + tuple(COLOURS) + DIGITS + tuple(DIRECTIONS)
_WORD_ID = {w: i for i, w in enumerate(WORDS)}
TEXT_TOKENS = 1 + 3 * MAX_OBJECTS  # background, then (colour, digit, direction) per object
TEXT_DIM = len(WORDS) + TEXT_TOKENS  # one-hot word + one-hot slot


@dataclass(frozen=True)
class ObjectCaption:
    colour: str
    digit: str
    direction: str

    def __post_init__(self) -> None:
        for kind, value, allowed in (("colour", self.colour, COLOURS), ("digit", self.digit, DIGITS),
                                     ("direction", self.direction, DIRECTIONS)):
            if value not in allowed:
                raise ValueError(f"{kind}: {value!r} is not in the vocabulary {sorted(allowed)}")


@dataclass(frozen=True)
class Caption:
    background: str
    objects: tuple[ObjectCaption, ...]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background: {self.background!r} is not one of {BACKGROUNDS}")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"objects: a caption names 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"objects: colours must differ (they identify the objects), got {colours}")

    @property
    def text(self) -> str:
        parts = [f"a {o.colour} {o.digit} moving {o.direction}" for o in self.objects]
        return f"{' and '.join(parts)} on {self.background}"

    def tokens(self) -> list[str | None]:
        """The word of each text slot (None: empty slot)."""
        out: list[str | None] = [self.background]
        for i in range(MAX_OBJECTS):
            if i < len(self.objects):
                o = self.objects[i]
                out += [o.colour, o.digit, o.direction]
            else:
                out += [None, None, None]
        return out


def parse_caption(text: str) -> Caption:
    """The inverse of `Caption.text`: "a red 3 moving left [and a blue 7 moving up] on stripes"."""
    words = text.strip().lower().split()
    if len(words) < 7 or words[-2] != "on":
        raise ValueError(f"caption: expected 'a <colour> <digit> moving <direction> [and ...] on <background>', "
                         f"got {text!r}")
    background, body = words[-1], words[:-2]
    objects = []
    while body:
        if len(body) < 5 or body[0] != "a" or body[3] != "moving":
            raise ValueError(f"caption: cannot read an object from {' '.join(body)!r} in {text!r}")
        objects.append(ObjectCaption(colour=body[1], digit=body[2], direction=body[4]))
        body = body[5:]
        if body:
            if body[0] != "and":
                raise ValueError(f"caption: expected 'and' between objects in {text!r}")
            body = body[1:]
    return Caption(background=background, objects=tuple(objects))


def encode_captions(captions: list[Caption], *, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, TEXT_TOKENS, TEXT_DIM) text embeddings: one-hot word + one-hot slot; empty slots are zero."""
    out = torch.zeros(len(captions), TEXT_TOKENS, TEXT_DIM, dtype=dtype)
    for b, caption in enumerate(captions):
        for slot, word in enumerate(caption.tokens()):
            if word is not None:
                out[b, slot, _WORD_ID[word]] = 1.0
                out[b, slot, len(WORDS) + slot] = 1.0
    return out.to(device)
