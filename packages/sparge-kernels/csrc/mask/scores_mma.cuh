// The selection kernel's scores on tensor cores (SelectParams::tensor_scores; cuda_mask.predict picks them for
// Q+K >= 1 GiB): S = Q̄·K̄ᵀ·scale for the CTA's kRows pooled query blocks against all Nk pooled key blocks, by
// mma.sync m16n8k8 TF32 in the "3xTF32" split: x = hi + lo with hi = tf32(x), lo = tf32(x − hi), and
// a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b (the lo·lo term is below fp32 rounding of the sum). The error per
// product is a few fp32 ulps of |a·b|: the selection's REL_TOL budget (1e-4 on probabilities,
// tests/test_cuda_mask.py) holds, where plain TF32 (2^-11) would not. Faster than the fp32-FMA loop (scores_fma)
// with 16-row CTAs, slower with 8 (most of each 16-row tile empty):
// tools/results/mask_tensor_scores_h200_2026-12-04.md.
#pragma once

#include <cstdint>

namespace sparge::mask {

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// x = hi + lo, both TF32 bit patterns.
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(x - __uint_as_float(hi));
}

// d += a · b for one m16n8k8 TF32 tile (A row-major 16x8: 4 registers, B col-major 8x8: 2, C/D 16x8: 4).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Same contract as scores_fma (select_blocks.cuh): q_t is the CTA's pooled queries transposed, [dp][kRows] in
// shared memory, zero-padded for d >= head_dim; k_src the (head_dim, k_ld) transposed pooled keys of the head;
// scores[r·nk + j] = scale · q_r·k_j for r < kRows, j < nk. Each warp takes 64-key tiles (8 n-tiles of 8) in
// turn and every 16-row m-tile of the CTA (rows >= kRows are zero). Fragment coordinates, g = lane / 4,
// t = lane % 4: A (row, d) = (g | g + 8, t | t + 4); B (d, key) = (t | t + 4, g); C (row, key) = (g | g + 8,
// 2t | 2t + 1).
template <int kRows, int kWarps, int kWarpKeys>
__device__ __forceinline__ void scores_mma_tf32x3(const float* q_t, const float* k_src, int k_ld, int head_dim,
                                                  int dp, int nk, float scale, float* scores, int warp, int lane) {
  constexpr int kMTiles = (kRows + 15) / 16;
  constexpr int kNTiles = kWarpKeys / 8;
  const int g = lane >> 2, t = lane & 3;
  for (int tile = warp * kWarpKeys; tile < nk; tile += kWarps * kWarpKeys) {
    float acc[kMTiles][kNTiles][4];
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f;

    // B: this lane's two head-dim rows of each n-tile's key g (coalesced: 8 consecutive keys per d), loaded one
    // k-step ahead so that the L2 latency hides behind the current step's mma.
    float next[kNTiles][2];
    auto load_b = [&](int d0) {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        const int j = tile + 8 * n + g;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int d = d0 + t + 4 * half;
          next[n][half] = (j < nk && d < head_dim) ? __ldg(k_src + int64_t(d) * k_ld + j) : 0.f;
        }
      }
    };
    load_b(0);
    for (int d0 = 0; d0 < dp; d0 += 8) {
      uint32_t b_hi[kNTiles][2], b_lo[kNTiles][2];
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int half = 0; half < 2; ++half) split_tf32(next[n][half], b_hi[n][half], b_lo[n][half]);
      if (d0 + 8 < dp) load_b(d0 + 8);
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        uint32_t a_hi[4], a_lo[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = 16 * m + g + 8 * (i & 1), d = d0 + t + 4 * (i >> 1);
          split_tf32(row < kRows ? q_t[d * kRows + row] : 0.f, a_hi[i], a_lo[i]);
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          const uint32_t bh[2] = {b_hi[n][0], b_hi[n][1]}, bl[2] = {b_lo[n][0], b_lo[n][1]};
          mma_tf32(acc[m][n], a_lo, bh);  // the small terms first
          mma_tf32(acc[m][n], a_hi, bl);
          mma_tf32(acc[m][n], a_hi, bh);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = 16 * m + g + 8 * (e >> 1), j = tile + 8 * n + 2 * t + (e & 1);
          if (row < kRows && j < nk) scores[row * nk + j] = acc[m][n][e] * scale;
        }
  }
}

}  // namespace sparge::mask
