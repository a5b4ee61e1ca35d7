"""`SpargeConfig`: the settings of sparse self-attention in a Wan transformer, validated once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Only the standard library at import time: the sparge-generate CLI takes its defaults from here before torch loads.

__all__ = ["SpargeConfig", "SpargeConfigError", "TOKEN_ORDERS", "TRAINED_FIELDS", "TRAINED_SPARGE_FILE", "default_tile",
           "trained_sparge_fields"]

TOKEN_ORDERS = ("1d", "tiled")


class SpargeConfigError(Exception):
    """Raised (as a ValueError or TypeError subclass, like the check that failed) for a bad `SpargeConfig` field;
    `.field` names it, and the message starts with its name. Other configs that embed a `SpargeConfig` (the
    training config) report the field under their own prefix, e.g. `sparge.topk: must be in [0, 1], got 1.5`."""

    field: str

    @property
    def reason(self) -> str:
        """The message without the leading field name ("must be in [0, 1], got 1.5")."""
        message = str(self)
        return message.removeprefix(f"{self.field} ") if message.startswith(f"{self.field} must") else message


class _ValueError(SpargeConfigError, ValueError):
    pass


class _TypeError(SpargeConfigError, TypeError):
    pass


def _field_error(name: str, exc: Exception) -> SpargeConfigError:
    err = (_TypeError if isinstance(exc, TypeError) else _ValueError)(str(exc))
    err.field = name
    return err


def default_tile(block_q: int) -> tuple[int, int, int]:
    """A (t, h, w) tile of `block_q` tokens, as cube-like as powers of two allow: 128 -> (4, 4, 8).

    Factors of two go to w, h, t in turn (w first: latent grids are widest); an odd remainder goes to w.
    """
    dims = [1, 1, 1]  # t, h, w
    rest, turn = block_q, 2
    while rest % 2 == 0:
        dims[turn] *= 2
        rest //= 2
        turn = (turn - 1) % 3
    dims[2] *= rest
    return dims[0], dims[1], dims[2]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class SpargeConfig:
    """How sparse self-attention runs in a Wan transformer.

    Attributes:
        topk: fraction of key blocks always kept per query block (SpargeAttention2 Top-k).
        topp: probability mass kept per query block (Top-p).
        dense_steps: the first `dense_steps` denoising steps run full attention.
        dense_layers: indices of transformer blocks whose self-attention always stays dense.
        token_order: "1d" (raster order, as in the paper) or "tiled" (3-D spatio-temporal tiles; see tiling.py).
        collect_stats: record the achieved density per step, layer and head.
        time_attention: time the self-attention processors (CUDA events on GPU, perf_counter on CPU).
        block_q, block_k: tokens per query / key block (paper: 128 / 64).
        tile: (t, h, w) tile for token_order="tiled"; default `default_tile(block_q)`, e.g. (4, 4, 8).
    """

    topk: float = 0.03
    topp: float = 0.2
    dense_steps: int = 0
    dense_layers: tuple[int, ...] = ()
    token_order: str = "1d"
    collect_stats: bool = False
    time_attention: bool = False
    block_q: int = 128
    block_k: int = 64
    tile: tuple[int, int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        from sparge_kernels.validation import check_block_size, check_fraction, check_topk_topp

        checks = {
            "topk": lambda v: check_fraction("topk", v),
            "topp": lambda v: check_fraction("topp", v),
            "dense_steps": lambda v: _check_int("dense_steps", v, 0),
            "dense_layers": _check_layers,
            "token_order": _check_token_order,
            "collect_stats": lambda v: _check_bool("collect_stats", v),
            "time_attention": lambda v: _check_bool("time_attention", v),
            "block_q": lambda v: check_block_size("block_q", v),
            "block_k": lambda v: check_block_size("block_k", v),
            "tile": lambda v: _check_tile(v, self.block_q),  # after block_q: its default depends on it
        }
        for name, check in checks.items():
            try:
                object.__setattr__(self, name, check(getattr(self, name)))
            except (TypeError, ValueError) as exc:
                raise _field_error(name, exc) from None
        try:  # last: a disabled training section may keep both at 0 once every field is known to be good
            check_topk_topp(self.topk, self.topp)
        except ValueError as exc:
            raise _field_error("topk", exc) from None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def merged(self, **overrides: Any) -> SpargeConfig:
        """A copy with `overrides` applied (validated again). A new `block_q` re-derives a default `tile`."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise TypeError(f"unknown SpargeConfig field {unknown[0]!r}; fields: {', '.join(self.field_names())}")
        if "block_q" in overrides and "tile" not in overrides and self.tile == default_tile(self.block_q):
            overrides["tile"] = None
        return replace(self, **overrides) if overrides else self

    def check_layers_exist(self, num_layers: int) -> None:
        bad = [i for i in self.dense_layers if i >= num_layers]
        if bad:
            raise _field_error("dense_layers", ValueError(
                f"dense_layers {bad} out of range: the transformer has {num_layers} blocks"))


def _check_layers(layers: object) -> tuple[int, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"dense_layers must be an iterable of block indices, got {type(layers).__name__}")
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"dense_layers must hold ints, got {i!r}")
        if i < 0:
            raise ValueError(f"dense_layers must hold non-negative block indices, got {i}")
        out.append(i)
    return tuple(sorted(set(out)))


def _check_token_order(value: object) -> str:
    if not isinstance(value, str) or value not in TOKEN_ORDERS:
        raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {value!r}")
    return value


def _check_tile(tile: object, block_q: int) -> tuple[int, int, int]:
    resolved = default_tile(block_q) if tile is None else tile
    if not isinstance(resolved, (tuple, list)) or len(resolved) != 3:
        raise ValueError(f"tile must be a (t, h, w) tuple of 3 positive ints, got {tile!r}")
    return tuple(_check_int("tile", int(x) if not isinstance(x, bool) else x, 1) for x in resolved)


# What sparge-train's export records beside a sparse student's weights: the mask it was distilled under. A student
# serves best with that mask, so loaders take it as their default (explicit settings still win).
TRAINED_SPARGE_FILE = "sparge.json"
TRAINED_FIELDS = ("topk", "topp", "dense_layers", "token_order")


def trained_sparge_fields(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The `TRAINED_FIELDS` recorded in `model_dir`'s (or its transformer/'s) `sparge.json`, validated as a
    `SpargeConfig` would; {} for a model without one (a dense model, or one sparge did not train)."""
    for folder in (Path(model_dir), Path(model_dir) / "transformer"):
        path = folder / TRAINED_SPARGE_FILE
        if path.is_file():
            break
    else:
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    found = {k: (tuple(v) if k == "dense_layers" and isinstance(v, list) else v)
             for k, v in raw.items() if k in TRAINED_FIELDS}
    try:
        SpargeConfig(**found)
    except SpargeConfigError as exc:
        raise _field_error(exc.field, ValueError(f"{exc} (recorded in {path})")) from None
    return found
