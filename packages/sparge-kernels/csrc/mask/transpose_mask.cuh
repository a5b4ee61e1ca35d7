// Kernel 3 of mask prediction: q_count / q_index (for each key block, the query blocks that keep it, ascending,
// then -1) from the row bitmask written by the selection kernel. One CTA per (half of a 32-key word column, h, b)
// stages that column's Nq words in shared memory; each warp then emits whole q_index rows with coalesced stores.
// Half columns: twice the CTAs of whole ones, so that the 1.3B shape (192 whole columns) fills the GPU.
#pragma once

#include <cstdint>

#include "mask/mask_params.h"
#include "mask/warp_utils.cuh"

namespace sparge::mask {

constexpr int kTransposeThreads = 256;
constexpr int kTransposeBits = 16;  // key blocks (bits of a word column) per CTA

// Grid: (ceil(Nk / 32) * 32 / kTransposeBits, group heads, B). Shared memory: Nq words.
__global__ void __launch_bounds__(kTransposeThreads) transpose_mask_kernel(const TransposeParams p) {
  extern __shared__ uint32_t column[];
  const int nq = p.num_q_blocks, nk = p.num_k_blocks;
  const int word = blockIdx.x / (32 / kTransposeBits);
  const int first_bit = blockIdx.x % (32 / kTransposeBits) * kTransposeBits;
  const int64_t bh = int64_t(blockIdx.z) * p.heads + p.head_begin + blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  wait_for_previous_kernel();  // the row bitmask
  const uint32_t* src = p.row_bits + bh * nq * p.bits_ld + word;
  for (int i = tid; i < nq; i += kTransposeThreads) column[i] = src[int64_t(i) * p.bits_ld];
  __syncthreads();

  const uint32_t below = lanes_below(lane);
  for (int bit = first_bit + warp; bit < first_bit + kTransposeBits; bit += kTransposeThreads / 32) {
    const int j = word * 32 + bit;
    if (j >= nk) break;
    int32_t* index_row = p.q_index + (bh * nk + j) * nq;
    int kept = 0;
    for (int i0 = 0; i0 < nq; i0 += 32) {
      const int i = i0 + lane;
      const bool keep = i < nq && ((column[i] >> bit) & 1u);
      const uint32_t keep_mask = __ballot_sync(kFullWarp, keep);
      if (keep) index_row[kept + __popc(keep_mask & below)] = i;
      kept += __popc(keep_mask);
    }
    for (int i = kept + lane; i < nq; i += 32) index_row[i] = -1;
    if (lane == 0) p.q_count[bh * nk + j] = kept;
  }
}

}  // namespace sparge::mask
