"""Token order "tiled": regroup the (T, H, W) raster of patch tokens into compact spatio-temporal tiles.

Attention blocks are runs of consecutive tokens (128 queries, 64 keys). In raster order a block is a strip of
one or two rows of one frame; after tiling, a block is a (t, h, w) cube, whose mean-pooled query and key are
more representative of their tokens, so the block mask predicted from them is sharper.

Order: first every *full* tile (tile-grid raster order, tokens raster order inside a tile), then the tokens of the
edge tiles cut short by a grid not divisible by the tile, again tile by tile. With the tile volume a multiple of
block_q (and block_q of block_k), every block in the full-tile region is exactly one tile (or half of one for keys,
the t-major half: a (t/2, h, w) cube). No padding: it is a permutation, so any grid round-trips exactly.
"""

from __future__ import annotations

import torch

__all__ = ["tile_permutation", "invert_permutation"]


def tile_permutation(
    grid: tuple[int, int, int], tile: tuple[int, int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """int64 (T·H·W,): `perm[i]` is the raster index of the token placed at position i of the tiled order."""
    t, h, w = grid
    tt, th, tw = tile
    if min(grid) <= 0 or min(tile) <= 0:
        raise ValueError(f"grid and tile must be positive, got grid={grid}, tile={tile}")
    ti = torch.arange(t, device=device).view(t, 1, 1)
    hi = torch.arange(h, device=device).view(1, h, 1)
    wi = torch.arange(w, device=device).view(1, 1, w)
    # Tile coordinates and position inside the tile (with the full tile's strides, so keys are unique).
    nt, nh, nw = -(-t // tt), -(-h // th), -(-w // tw)
    tile_index = ((ti // tt) * nh + hi // th) * nw + wi // tw
    inner = ((ti % tt) * th + hi % th) * tw + wi % tw
    # A tile is cut short when it reaches past the grid on any axis.
    partial = ((ti // tt + 1) * tt > t) | ((hi // th + 1) * th > h) | ((wi // tw + 1) * tw > w)
    volume = tt * th * tw
    key = (partial.long() * (nt * nh * nw) + tile_index) * volume + inner
    return torch.argsort(key.flatten())


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
