"""Tiled token order: an exact permutation for any grid; full tiles become whole attention blocks."""

from __future__ import annotations

import pytest
import torch

from sparge_pipelines.config import default_tile
from sparge_pipelines.tiling import invert_permutation, tile_permutation


@pytest.mark.parametrize(
    ("grid", "tile"),
    [
        ((4, 8, 16), (4, 4, 8)),  # divisible
        ((21, 30, 52), (4, 4, 8)),  # Wan2.1 480p, 81 frames: edge tiles on every axis
        ((3, 5, 9), (2, 2, 4)),
        ((1, 1, 7), (4, 4, 8)),  # smaller than one tile
        ((5, 3, 2), (1, 1, 1)),
    ],
)
def test_round_trip_exact(grid, tile):
    n = grid[0] * grid[1] * grid[2]
    perm = tile_permutation(grid, tile)
    assert perm.dtype == torch.int64
    assert torch.equal(torch.sort(perm).values, torch.arange(n))  # a permutation: nothing padded or lost
    inverse = invert_permutation(perm)
    x = torch.randn(2, n, 3, 5)
    tiled = x.index_select(1, perm)
    assert torch.equal(tiled.index_select(1, inverse), x)
    assert torch.equal(x.index_select(1, inverse).index_select(1, perm), x)


def test_full_tiles_are_contiguous_cubes():
    grid, tile = (5, 9, 18), (4, 4, 8)
    perm = tile_permutation(grid, tile)
    t, h, w = perm // (grid[1] * grid[2]), (perm // grid[2]) % grid[1], perm % grid[2]
    full_tiles = (grid[0] // 4) * (grid[1] // 4) * (grid[2] // 8)
    for i in range(full_tiles):
        block = slice(128 * i, 128 * (i + 1))
        # 128 consecutive tokens = one 4x4x8 cube, raster order inside it.
        assert (t[block].max() - t[block].min(), h[block].max() - h[block].min(), w[block].max() - w[block].min()) \
            == (3, 3, 7)
        assert torch.equal(t[block] % 4 * 32 + h[block] % 4 * 8 + w[block] % 8, torch.arange(128))
        # Each 64-key half is a 2x4x8 cube.
        assert t[block][:64].max() - t[block][:64].min() == 1
    # The rest: the edge tiles, after every full one.
    assert perm.numel() - 128 * full_tiles == 5 * 9 * 18 - 4 * 8 * 16


def test_default_tile_fills_a_query_block():
    assert default_tile(128) == (4, 4, 8)
    assert default_tile(64) == (4, 4, 4)
    assert default_tile(16) == (2, 2, 4)
    for b in (16, 32, 64, 96, 128, 256):
        t, h, w = default_tile(b)
        assert t * h * w == b


def test_bad_grid_raises():
    with pytest.raises(ValueError, match="grid"):
        tile_permutation((0, 4, 4), (1, 2, 2))
