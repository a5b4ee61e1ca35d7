// Kernel 3 of mask prediction: q_count / q_index (for each key block, the query blocks that keep it, ascending,
// then -1) from the row bitmask written by the selection kernel. One CTA per (half of a 32-key word column, h, b)
// stages that column's Nq words in shared memory; each warp then compacts a q_index row into its own shared row
// buffer and writes the row out whole with 16-byte stores (ragged 4-byte stores per 32 entries wrote at about half
// the bandwidth). Half columns: twice the CTAs of whole ones, so that the 1.3B shape (192 whole columns) fills the
// GPU.
#pragma once

#include <cstdint>

#include "mask/mask_params.h"
#include "mask/warp_utils.cuh"

namespace sparge::mask {

constexpr int kTransposeThreads = 256;
constexpr int kTransposeWarps = kTransposeThreads / 32;
constexpr int kTransposeBits = 16;  // key blocks (bits of a word column) per CTA

// Words of one warp's row buffer: Nq entries shifted by up to 3 to the global row's 16-byte phase, whole int4s.
__host__ __device__ constexpr int transpose_row_words(int nq) { return (nq + 3 + 3) / 4 * 4; }

__host__ __device__ constexpr size_t transpose_smem_bytes(int nq) {
  return sizeof(uint32_t) * (size_t(transpose_row_words(nq)) * (kTransposeWarps + 1));
}

// Grid: (ceil(Nk / 32) * 32 / kTransposeBits, group heads, B). Shared memory (transpose_smem_bytes): the column,
// then one row buffer per warp.
__global__ void __launch_bounds__(kTransposeThreads) transpose_mask_kernel(const TransposeParams p) {
  extern __shared__ int4 transpose_smem[];
  const int nq = p.num_q_blocks, nk = p.num_k_blocks;
  const int row_words = transpose_row_words(nq);
  uint32_t* column = reinterpret_cast<uint32_t*>(transpose_smem);
  const int word = blockIdx.x / (32 / kTransposeBits);
  const int first_bit = blockIdx.x % (32 / kTransposeBits) * kTransposeBits;
  const int64_t bh = int64_t(blockIdx.z) * p.heads + p.head_begin + blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int32_t* row_buffer = reinterpret_cast<int32_t*>(column + row_words * (warp + 1));

  wait_for_previous_kernel();  // the row bitmask
  const uint32_t* src = p.row_bits + bh * nq * p.bits_ld + word;
  for (int i = tid; i < nq; i += kTransposeThreads) column[i] = src[int64_t(i) * p.bits_ld];
  __syncthreads();

  const uint32_t below = lanes_below(lane);
  for (int bit = first_bit + warp; bit < first_bit + kTransposeBits; bit += kTransposeWarps) {
    const int j = word * 32 + bit;
    if (j >= nk) break;
    int32_t* index_row = p.q_index + (bh * nk + j) * nq;
    // Entry x of the row sits at row_buffer[phase + x], in the same position within its int4 as in global memory.
    const int phase = int((reinterpret_cast<uintptr_t>(index_row) >> 2) & 3u);
    int kept = 0;
    for (int i0 = 0; i0 < nq; i0 += 32) {
      const int i = i0 + lane;
      const bool keep = i < nq && ((column[i] >> bit) & 1u);
      const uint32_t keep_mask = __ballot_sync(kFullWarp, keep);
      if (keep) row_buffer[phase + kept + __popc(keep_mask & below)] = i;
      kept += __popc(keep_mask);
    }
    __syncwarp();
    // Out: int4 q covers entries 4q - phase .. 4q + 3 - phase; the first and last may hang over the row's ends.
    const int quads = (phase + nq + 3) / 4;
    for (int q = lane; q < quads; q += 32) {
      int4 v = reinterpret_cast<const int4*>(row_buffer)[q];
      const int x = 4 * q - phase;
      v.x = x < kept ? v.x : -1;
      v.y = x + 1 < kept ? v.y : -1;
      v.z = x + 2 < kept ? v.z : -1;
      v.w = x + 3 < kept ? v.w : -1;
      if (x >= 0 && x + 3 < nq) {
        *reinterpret_cast<int4*>(index_row + x) = v;
      } else {
        const int32_t e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (x + c >= 0 && x + c < nq) index_row[x + c] = e[c];
        }
      }
    }
    __syncwarp();  // the buffer is rewritten by this warp's next row
    if (lane == 0) p.q_count[bh * nk + j] = kept;
  }
}

}  // namespace sparge::mask
