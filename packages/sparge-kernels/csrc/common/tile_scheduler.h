// Maps a CTA to its work tiles: (block, head, batch), where a block is a query block (forward) or a key block
// (the backward's dK/dV kernel). Blocks of one head are adjacent in launch (and claim) order so they share that
// head's operands in L2.
//   StaticTileScheduler             one CTA per tile; the hardware starts a CTA as another one exits (the
//                                   portable forward).
//   DynamicPersistentTileScheduler  one CTA per SM; each takes tiles in order from an atomic counter (the first
//                                   one: its blockIdx.x), so the producer can load the next tile's operands while
//                                   the consumers finish the current one, and tiles of very different kept-block
//                                   counts still balance (the Hopper forward; the Hopper backward's default
//                                   persistent schedule). The producer hands each next tile to the consumers
//                                   through a TileMailbox (common/tile_mailbox_sm90.h). It can split the
//                                   tiles of the last, partly filled round by key range (TailSplit: the Hopper
//                                   forward), so that the round's idle SMs share them.
#pragma once

#include <cuda_runtime.h>

#include "common/cuda_check.h"
#include "common/device_info.h"
#include "common/tail_split.h"

namespace sparge {

struct TileCoord {
  int block;
  int head;
  int batch;
  int split_tile = -1;  // a part of a split tile: the tile's index among the split ones, else -1
  int part = 0;         // which of the split tile's `parts` key ranges
  int parts = 1;
};

struct StaticTileScheduler {
  static dim3 grid(int blocks, int heads, int batch) {
    return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(heads), static_cast<unsigned>(batch));
  }
  __device__ static TileCoord tile() {
    return TileCoord{static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z)};
  }
};

struct DynamicPersistentTileScheduler {
  int blocks;    // per (batch, head)
  int heads;
  int batch;
  int* counter;  // zeroed on the stream before the launch; a split launch's per-split-tile arrival counts follow it
  TailSplit split{};  // parts == 1: no split

  __host__ __device__ int num_whole_tiles() const { return blocks * heads * batch; }
  // Work units the CTAs claim: the whole tiles before split.split_from, then each split tile's parts.
  __host__ __device__ int num_tiles() const { return split.units(num_whole_tiles()); }
  // Host, before each launch: zeroes the counter (and the split tiles' arrival counts) on `stream` and returns the
  // grid, one CTA per SM of the current device (the kernels' shared memory allows one), never more than there
  // are units.
  dim3 prepare_launch(cudaStream_t stream) const {
    const int counters = 1 + split.split_tiles(num_whole_tiles());
    SPARGE_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(int) * size_t(counters), stream));
    const int units = num_tiles(), sms = current_device_sms();
    return dim3(static_cast<unsigned>(units < sms ? units : sms));
  }
  // Unit u in claim order: whole tiles with blocks fastest, then heads, then batches (the static grid's order),
  // then the split tiles' parts, a tile's parts adjacent.
  __device__ TileCoord decode(int u) const {
    int t = u, split_tile = -1, part = 0;
    if (split.parts > 1 && u >= split.split_from) {
      const int v = u - split.split_from;
      split_tile = v / split.parts;
      part = v - split_tile * split.parts;
      t = split.split_from + split_tile;
    }
    const int per_batch = blocks * heads;
    const int b = t / per_batch, rest = t - b * per_batch;
    const int h = rest / blocks;
    return TileCoord{rest - h * blocks, h, b, split_tile, part, split_tile >= 0 ? split.parts : 1};
  }
  __device__ static int first_tile() { return static_cast<int>(blockIdx.x); }
  // The next unclaimed tile (>= num_tiles(): none left). The counter starts at 0; the first gridDim.x tiles are
  // the CTAs' first ones.
  __device__ int claim_next() const { return static_cast<int>(gridDim.x) + atomicAdd(counter, 1); }
};

}  // namespace sparge
