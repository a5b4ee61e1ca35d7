// Maps a CTA to its work tile: (query block, head, batch). Query blocks of one head are adjacent in launch
// order so they share that head's K/V in L2.
#pragma once

#include <cuda_runtime.h>

#include "common/params.h"

namespace sparge::fwd {

struct WorkTile {
  int m_block;
  int head;
  int batch;
};

struct StaticTileScheduler {
  static dim3 grid(FwdParams const& p) {
    return dim3(static_cast<unsigned>(p.num_q_blocks), static_cast<unsigned>(p.heads),
                static_cast<unsigned>(p.batch));
  }
  __device__ static WorkTile tile() {
    return WorkTile{static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z)};
  }
};

}  // namespace sparge::fwd
