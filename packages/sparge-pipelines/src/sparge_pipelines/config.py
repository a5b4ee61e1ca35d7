"""`SpargeConfig`: the settings of sparse self-attention in a Wan transformer, validated once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sparge_kernels.validation import check_block_size, check_topk_topp

__all__ = ["SpargeConfig", "TOKEN_ORDERS", "default_tile"]

TOKEN_ORDERS = ("1d", "tiled")


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
        topk, topp = check_topk_topp(self.topk, self.topp)
        object.__setattr__(self, "topk", topk)
        object.__setattr__(self, "topp", topp)
        _check_int("dense_steps", self.dense_steps, 0)
        object.__setattr__(self, "dense_layers", _check_layers(self.dense_layers))
        if not isinstance(self.token_order, str) or self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order must be one of {TOKEN_ORDERS}, got {self.token_order!r}")
        _check_bool("collect_stats", self.collect_stats)
        _check_bool("time_attention", self.time_attention)
        check_block_size("block_q", self.block_q)
        check_block_size("block_k", self.block_k)
        tile = default_tile(self.block_q) if self.tile is None else self.tile
        if not isinstance(tile, (tuple, list)) or len(tile) != 3:
            raise ValueError(f"tile must be a (t, h, w) tuple of 3 positive ints, got {self.tile!r}")
        tile = tuple(_check_int("tile", int(x) if not isinstance(x, bool) else x, 1) for x in tile)
        object.__setattr__(self, "tile", tile)

    def check_layers_exist(self, num_layers: int) -> None:
        bad = [i for i in self.dense_layers if i >= num_layers]
        if bad:
            raise ValueError(f"dense_layers {bad} out of range: the transformer has {num_layers} blocks")


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
