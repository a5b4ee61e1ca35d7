// Maps CTAs to work tiles (query block, head, batch). Query blocks of one head are adjacent in tile order
// so concurrently running tiles share that head's K/V in L2.
//   StaticTileScheduler:     one CTA per tile (the portable kernel).
//   PersistentTileScheduler: one CTA per SM walking tiles blockIdx.x, + gridDim.x, ... (the Hopper kernel:
//                            its producer loads the next tile while the consumers finish the current one).
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
    return dim3(static_cast<unsigned>(std::max(1, std::min(num_tiles(p), num_sms))));
  }
  __device__ static WorkTile tile(AttentionForwardParams const& p, int linear) {
    const int rest = linear / p.num_q_blocks;
    return WorkTile{linear % p.num_q_blocks, rest % p.heads, rest / p.heads};
  }
};

}  // namespace sparge::fwd
