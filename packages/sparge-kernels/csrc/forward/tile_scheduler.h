// Maps a CTA to its work tiles: (query block, head, batch). Query blocks of one head are adjacent in launch
// (and claim) order so they share that head's K/V in L2.
//   StaticTileScheduler             one CTA per tile; the hardware starts a CTA as another one exits (the
//                                   portable kernel).
//   DynamicPersistentTileScheduler  one CTA per SM; each takes tiles in order from an atomic counter (the
//                                   first one: its blockIdx.x), so the producer can load the next tile's Q and
//                                   K/V while the consumers finish the current one, and tiles of very different
//                                   kept-block counts still balance (the Hopper kernel, kernel_fwd_sm90.h).
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

struct DynamicPersistentTileScheduler {
  __host__ __device__ static int num_tiles(FwdParams const& p) { return p.num_q_blocks * p.heads * p.batch; }
  // One CTA per SM (the kernel's shared memory allows one), never more than there are tiles.
  static dim3 grid(FwdParams const& p, int num_sms) {
    const int tiles = num_tiles(p);
    return dim3(static_cast<unsigned>(tiles < num_sms ? tiles : num_sms));
  }
  // Tile t in launch order: query blocks fastest, then heads, then batches (the static grid's order).
  __device__ static WorkTile decode(FwdParams const& p, int t) {
    const int per_batch = p.num_q_blocks * p.heads;
    const int batch = t / per_batch, rest = t - batch * per_batch;
    const int head = rest / p.num_q_blocks;
    return WorkTile{rest - head * p.num_q_blocks, head, batch};
  }
  __device__ static int first_tile() { return static_cast<int>(blockIdx.x); }
  // The next unclaimed tile (>= num_tiles: none left). The counter starts at 0; the first gridDim.x tiles are
  // the CTAs' first ones.
  __device__ static int claim_next(FwdParams const& p) {
    return static_cast<int>(gridDim.x) + atomicAdd(p.tile_counter, 1);
  }
};

}  // namespace sparge::fwd
