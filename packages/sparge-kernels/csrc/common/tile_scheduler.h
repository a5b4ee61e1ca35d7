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
//                                   through a TileMailbox (common/tile_mailbox_sm90.h).
#pragma once

#include <cuda_runtime.h>

#include "common/cuda_check.h"
#include "common/device_info.h"

namespace sparge {

struct TileCoord {
  int block;
  int head;
  int batch;
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
  int* counter;  // zeroed on the stream before the launch

  __host__ __device__ int num_tiles() const { return blocks * heads * batch; }
  // Host, before each launch: zeroes the counter on `stream` and returns the grid, one CTA per SM of the current
  // device (the kernels' shared memory allows one), never more than there are tiles.
  dim3 prepare_launch(cudaStream_t stream) const {
    SPARGE_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(int), stream));
    const int tiles = num_tiles(), sms = current_device_sms();
    return dim3(static_cast<unsigned>(tiles < sms ? tiles : sms));
  }
  // Tile t in claim order: blocks fastest, then heads, then batches (the static grid's order).
  __device__ TileCoord decode(int t) const {
    const int per_batch = blocks * heads;
    const int b = t / per_batch, rest = t - b * per_batch;
    const int h = rest / blocks;
    return TileCoord{rest - h * blocks, h, b};
  }
  __device__ static int first_tile() { return static_cast<int>(blockIdx.x); }
  // The next unclaimed tile (>= num_tiles(): none left). The counter starts at 0; the first gridDim.x tiles are
  // the CTAs' first ones.
  __device__ int claim_next() const { return static_cast<int>(gridDim.x) + atomicAdd(counter, 1); }
};

}  // namespace sparge
