// Maps CTAs to work tiles (query block, head, batch). Query blocks of one head are adjacent in tile order
// so concurrently running tiles share that head's K/V in L2.
//   StaticTileScheduler:     one CTA per tile (the portable kernel).
//   PersistentTileScheduler: the Hopper kernel's: CTAs walk tiles blockIdx.x, then either + gridDim.x each
//                            step (static) or the next index from a global atomic counter (dynamic); with
//                            grid = #tiles each CTA does one tile. Its producer fetches the next index and
//                            publishes it to the consumers through shared memory.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "forward/params.h"

namespace sparge::fwd {

struct WorkTile {
  int m_block;
  int head;
  int batch;
};

struct StaticTileScheduler {
  static dim3 grid(AttentionForwardParams const& p) {
    return dim3(static_cast<unsigned>(p.num_q_blocks), static_cast<unsigned>(p.heads),
                static_cast<unsigned>(p.batch));
  }
  __device__ static WorkTile tile() {
    return WorkTile{static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z)};
  }
};

struct PersistentTileScheduler {
  static int num_tiles(AttentionForwardParams const& p) { return p.num_q_blocks * p.heads * p.batch; }
  static dim3 grid(AttentionForwardParams const& p, int num_sms) {
    const int tiles = num_tiles(p);
    return dim3(static_cast<unsigned>(p.persistent ? std::max(1, std::min(tiles, num_sms)) : tiles));
  }
  __device__ static int next(AttentionForwardParams const& p, int current) {
    return p.tile_counter != nullptr ? atomicAdd(p.tile_counter, 1) + int(gridDim.x) : current + int(gridDim.x);
  }
  __device__ static WorkTile tile(AttentionForwardParams const& p, int linear) {
    const int rest = linear / p.num_q_blocks;
    return WorkTile{linear % p.num_q_blocks, rest % p.heads, rest / p.heads};
  }
};

}  // namespace sparge::fwd
