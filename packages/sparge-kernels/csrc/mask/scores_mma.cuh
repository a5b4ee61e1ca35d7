// Scores of the mask selection on tensor cores: S = Q̄ K̄ᵀ over pooled (fp32) rows, as 3xTF32 `mma.sync.m16n8k8`
// (each fp32 operand split into a TF32 high part and a TF32 remainder; hi·hi + hi·lo + lo·hi keeps ~fp32
// accuracy, well inside the selection's 1e-4 rounding band, where one TF32 product would not be). scores_fma in
// select_blocks.cuh is the other path (`SelectParams::score_mma` = 0); both write the same [kRows][Nk] scores.
#pragma once

#include <cstdint>

#include "mask/mask_params.h"

namespace sparge::mask {

constexpr int kMmaChunkKeys = 32;  // key blocks per warp chunk: 4 n-tiles of 8

struct Tf32Pair {
  uint32_t hi, lo;
};

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ Tf32Pair split_tf32(float x) {
  const uint32_t hi = to_tf32(x);
  return Tf32Pair{hi, to_tf32(x - __uint_as_float(hi))};
}

// d += a·b for one m16n8k8 TF32 tile (fp32 accumulators).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// q_t: pooled queries transposed in shared memory, [dp][kRows] (zero rows/columns pad); k_src: this (b, h)'s
// transposed pooled keys [D][k_ld] in global memory; scores: [kRows][nk] in shared memory, scaled by `scale`.
// Warps take chunks of 32 key blocks in turn; per chunk, every m-tile of 16 rows walks the head dim in k-steps of
// 8. Fragment layouts are the PTX ISA's for m16n8k8 .tf32: g = lane / 4 (row / key), t = lane % 4 (head dim).
template <int kRows, int kWarps>
__device__ __forceinline__ void scores_mma(const float* q_t, const float* k_src, int k_ld, int head_dim, int dp,
                                           int nk, float scale, float* scores, int warp, int lane) {
  constexpr int kMTiles = (kRows + 15) / 16;
  constexpr int kNTiles = kMmaChunkKeys / 8;
  const int g = lane >> 2, t = lane & 3;
  for (int chunk = warp * kMmaChunkKeys; chunk < nk; chunk += kWarps * kMmaChunkKeys) {
    float acc[kMTiles][kNTiles][4];
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f;

    // B fragments (k = t and t + 4, key = g) of the chunk's n-tiles, one k-step ahead of the MMAs.
    float next[kNTiles][2];
    auto load_keys = [&](int d0) {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        const int j = chunk + n * 8 + g;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int d = d0 + t + 4 * half;
          next[n][half] = (j < nk && d < head_dim) ? __ldg(k_src + int64_t(d) * k_ld + j) : 0.f;
        }
      }
    };
    load_keys(0);
    for (int d0 = 0; d0 < dp; d0 += 8) {
      Tf32Pair b[kNTiles][2];
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        b[n][0] = split_tf32(next[n][0]);
        b[n][1] = split_tf32(next[n][1]);
      }
      if (d0 + 8 < dp) load_keys(d0 + 8);
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        // A fragment: a0 (row g, k t), a1 (row g + 8, k t), a2 (row g, k t + 4), a3 (row g + 8, k t + 4).
        uint32_t a_hi[4], a_lo[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = m * 16 + g + 8 * (e & 1);
          const int d = d0 + t + 4 * (e >> 1);
          const Tf32Pair a = split_tf32(row < kRows ? q_t[d * kRows + row] : 0.f);
          a_hi[e] = a.hi;
          a_lo[e] = a.lo;
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          // Small terms first, so they are not lost against the large one.
          mma_tf32(acc[m][n], a_lo, b[n][0].hi, b[n][1].hi);
          mma_tf32(acc[m][n], a_hi, b[n][0].lo, b[n][1].lo);
          mma_tf32(acc[m][n], a_hi, b[n][0].hi, b[n][1].hi);
        }
      }
    }
    // C fragment: c0, c1 (row g, keys 2t, 2t + 1), c2, c3 (row g + 8, same keys).
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = m * 16 + g + 8 * (e >> 1);
          const int j = chunk + n * 8 + 2 * t + (e & 1);
          if (row < kRows && j < nk) scores[row * nk + j] = acc[m][n][e] * scale;
        }
  }
}

}  // namespace sparge::mask
