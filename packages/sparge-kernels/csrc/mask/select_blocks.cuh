// Kernel 2 of mask prediction: for kRows query blocks of one (b, h), the scaled scores against all Nk pooled
// key blocks (fp32 FMA, into shared memory), then per row (one warp each) the softmax and the hybrid
// Top-k ∪ Top-p selection (select_row.cuh), written straight to kv_count / kv_index and a row bitmask that the
// transpose kernel turns into q_count / q_index.
#pragma once

#include <cstdint>

#include "mask/mask_params.h"
#include "mask/scores_mma.cuh"
#include "mask/select_row.cuh"

namespace sparge::mask {

constexpr int kSelectThreads = 256;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int kWarpKeys = 64;  // key blocks per warp tile: 2 per lane
constexpr int kDChunk = 8;     // head-dim steps per register prefetch

// Rows in registers where they fit (SelectParams::register_rows): 16 words per lane cover Nk <= 512 (the 1.3B
// shape), 40 words Nk <= 1280 (14B: 1182) with at most 16 rows per CTA; other rows stay in shared memory. The
// separate selection kernel (mask_launch.cu) and the fused one (mask_launch_fused.cu) pick alike.
constexpr int kRowWordsShort = 16, kRowWordsLong = 40;

__host__ __device__ constexpr int padded_head_dim(int head_dim) { return (head_dim + kDChunk - 1) / kDChunk * kDChunk; }

// Shared memory: the staged queries (fp32 [dp][kRows] for FMA scores, TF32 A fragments for tensor-core ones),
// scores [kRows][Nk], per-warp candidate scratch [warps][kCandidates].
template <int kRows>
constexpr size_t query_stage_words(int head_dim, bool tensor_scores) {
  return tensor_scores ? size_t(query_fragment_words<kRows>(head_dim)) : size_t(padded_head_dim(head_dim)) * kRows;
}

template <int kRows>
constexpr size_t select_smem_bytes(int head_dim, int num_k_blocks, bool tensor_scores) {
  return sizeof(float) * (query_stage_words<kRows>(head_dim, tensor_scores) + size_t(kRows) * num_k_blocks +
                          size_t(kSelectWarps) * kCandidates);
}

// Scores by fp32 FMAs: each warp owns 64-key tiles; lane keys j and j + 32 read the transposed pooled K
// coalesced (L2); one float4 broadcast of q_t gives 4 rows at one d.
template <int kRows, bool kPooledInThisLaunch>
__device__ __forceinline__ void scores_fma(const float* q_t, const float* k_src, int k_ld, int head_dim, int dp,
                                           int nk, float scale, float* scores, int warp, int lane) {
  for (int tile = warp * kWarpKeys; tile < nk; tile += kSelectWarps * kWarpKeys) {
    const int j0 = tile + lane, j1 = j0 + 32;
    const bool has0 = j0 < nk, has1 = j1 < nk;
    float acc0[kRows], acc1[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc0[r] = acc1[r] = 0.f;

    float next0[kDChunk], next1[kDChunk];
    auto load_keys = [&](int d0) {
#pragma unroll
      for (int u = 0; u < kDChunk; ++u) {
        const int d = d0 + u;
        const float* src = k_src + int64_t(d) * k_ld;
        next0[u] = (has0 && d < head_dim) ? load_pooled<kPooledInThisLaunch>(src + j0) : 0.f;
        next1[u] = (has1 && d < head_dim) ? load_pooled<kPooledInThisLaunch>(src + j1) : 0.f;
      }
    };
    load_keys(0);
    for (int d0 = 0; d0 < dp; d0 += kDChunk) {
      float cur0[kDChunk], cur1[kDChunk];
#pragma unroll
      for (int u = 0; u < kDChunk; ++u) {
        cur0[u] = next0[u];
        cur1[u] = next1[u];
      }
      if (d0 + kDChunk < dp) load_keys(d0 + kDChunk);  // in flight while this chunk is multiplied
#pragma unroll
      for (int u = 0; u < kDChunk; ++u) {
        const float4* qv = reinterpret_cast<const float4*>(q_t + (d0 + u) * kRows);
#pragma unroll
        for (int r4 = 0; r4 < kRows / 4; ++r4) {
          const float4 q = qv[r4];
          acc0[4 * r4 + 0] = fmaf(q.x, cur0[u], acc0[4 * r4 + 0]);
          acc0[4 * r4 + 1] = fmaf(q.y, cur0[u], acc0[4 * r4 + 1]);
          acc0[4 * r4 + 2] = fmaf(q.z, cur0[u], acc0[4 * r4 + 2]);
          acc0[4 * r4 + 3] = fmaf(q.w, cur0[u], acc0[4 * r4 + 3]);
          acc1[4 * r4 + 0] = fmaf(q.x, cur1[u], acc1[4 * r4 + 0]);
          acc1[4 * r4 + 1] = fmaf(q.y, cur1[u], acc1[4 * r4 + 1]);
          acc1[4 * r4 + 2] = fmaf(q.z, cur1[u], acc1[4 * r4 + 2]);
          acc1[4 * r4 + 3] = fmaf(q.w, cur1[u], acc1[4 * r4 + 3]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (has0) scores[r * nk + j0] = acc0[r] * scale;
      if (has1) scores[r * nk + j1] = acc1[r] * scale;
    }
  }
}

// One CTA: query blocks q0 .. q0 + kRows - 1 of the (b, h) row bh = b * H + h; shared memory as select_smem_bytes
// says. kTensorScores: the scores by 3xTF32 mma.sync (scores_mma.cuh) instead of fp32 FMAs. kRowWords > 0: each
// warp loads its row into kRowWords registers per lane (Nk <= 32 kRowWords) for the selection's passes; 0: the
// passes read and rewrite it in shared memory. Same result. kPooledInThisLaunch: the pooled blocks were written
// by this launch (load_pooled).
template <int kRows, bool kTensorScores, int kRowWords, bool kPooledInThisLaunch = false>
__device__ __forceinline__ void select_blocks(const SelectParams& p, int q0, int64_t bh) {
  static_assert(kRows % 4 == 0 && kRows >= 4, "query rows are read as float4");
  extern __shared__ float4 smem_f4[];
  float* q_t = reinterpret_cast<float*>(smem_f4);
  const int head_dim = p.head_dim;
  const int dp = padded_head_dim(head_dim);
  const int nq = p.num_q_blocks, nk = p.num_k_blocks;
  float* scores = q_t + query_stage_words<kRows>(head_dim, kTensorScores);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Scores [kRows][Nk], scaled, from the pooled queries staged in shared memory.
  const float* q_src = p.q_pooled + bh * nq * head_dim;
  const float* k_src = p.k_pooled_t + bh * head_dim * p.k_ld;
  if constexpr (kTensorScores) {
    stage_query_fragments<kRows, kSelectThreads>(q_src, q0, nq, head_dim, reinterpret_cast<uint4*>(smem_f4), tid);
    __syncthreads();
    scores_mma_tf32x3<kRows, kSelectWarps, kWarpKeys, kPooledInThisLaunch>(
        reinterpret_cast<const uint4*>(smem_f4), k_src, p.k_ld, head_dim, nk, p.scale, scores, warp, lane);
  } else {
    // Transposed so one float4 broadcast gives 4 rows at one d; zero rows/columns pad.
    for (int idx = tid; idx < kRows * dp; idx += kSelectThreads) {
      const int r = idx / dp, d = idx - r * dp;
      q_t[d * kRows + r] = (q0 + r < nq && d < head_dim) ? q_src[int64_t(q0 + r) * head_dim + d] : 0.f;
    }
    __syncthreads();
    scores_fma<kRows, kPooledInThisLaunch>(q_t, k_src, p.k_ld, head_dim, dp, nk, p.scale, scores, warp, lane);
  }
  __syncthreads();

  // Selection: one warp per query block row.
  for (int r = warp; r < kRows; r += kSelectWarps) {
    const int i = q0 + r;
    if (i >= nq) break;
    uint32_t* row_logits = reinterpret_cast<uint32_t*>(scores + r * nk);
    uint32_t* scratch = reinterpret_cast<uint32_t*>(scores + kRows * nk) + warp * kCandidates;
    const int64_t row_id = bh * nq + i;
    auto select_and_write = [&](auto& row) {
      const RowCut cut = select_row(row, p.topk_count, p.topp, p.compact != 0, scratch);
      write_row(row, cut, p.kv_index + row_id * nk, p.kv_count + row_id, p.row_bits + row_id * p.bits_ld);
    };
    if constexpr (kRowWords > 0) {
      RegisterRow<kRowWords> row(row_logits, nk, lane);
      select_and_write(row);
    } else {
      SharedRow row{row_logits, nk, lane};
      select_and_write(row);
    }
  }
}

// Grid: (ceil(Nq / kRows), group heads, B). Rows in shared memory, or in registers up to Nk = 512. The tensor-core
// scores with up to 16 rows are held to 128 registers so that two CTAs per SM stay resident (as many as their
// shared memory allows at Nk ~1200).
template <int kRows, bool kTensorScores, int kRowWords>
__global__ void __launch_bounds__(kSelectThreads, kTensorScores && kRows <= 16 ? 2 : 0)
    select_blocks_kernel(const SelectParams p) {
  wait_for_previous_kernel();  // the pooled blocks
  select_blocks<kRows, kTensorScores, kRowWords>(p, blockIdx.x * kRows,
                                                 int64_t(blockIdx.z) * p.heads + p.head_begin + blockIdx.y);
}

// Rows of up to 32 kRowWords key blocks in registers, held to 128 registers per thread so that two 16-row CTAs per
// SM (as many as their shared memory allows at Nk ~1200) stay resident; unbounded, ptxas would leave room for one.
template <int kRows, bool kTensorScores, int kRowWords>
__global__ void __launch_bounds__(kSelectThreads, 2) select_blocks_long_rows_kernel(const SelectParams p) {
  static_assert(kRows <= 16 && kRowWords > 0, "long register rows: at most 16 rows per CTA");
  wait_for_previous_kernel();  // the pooled blocks
  select_blocks<kRows, kTensorScores, kRowWords>(p, blockIdx.x * kRows,
                                                 int64_t(blockIdx.z) * p.heads + p.head_begin + blockIdx.y);
}

}  // namespace sparge::mask
