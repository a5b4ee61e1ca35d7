// The selection kernel's scores on tensor cores (SelectParams::tensor_scores; cuda_mask.predict picks them for
// Q+K >= 1 GiB): S = Q̄·K̄ᵀ·scale for the CTA's kRows pooled query blocks against all Nk pooled key blocks, by
// mma.sync m16n8k8 TF32 in the "3xTF32" split: x = hi + lo, and a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b (the
// lo·lo term is below fp32 rounding of the sum). The error per product is about 2^-20 |a·b|: the selection's
// REL_TOL budget (1e-4 on probabilities, tests/test_cuda_mask.py) holds, where plain TF32 (2^-11) would not.
//
// The queries are split once per CTA (hi rounded to nearest) into A fragments in shared memory
// (stage_query_fragments); the keys as they stream in from L2, in two instructions each (tf32_low_part); a
// 64-key tile inside Nk reads its 8 n-tiles at immediate offsets of one row pointer, two k-steps ahead.
// Measured: tools/results/mask_select_lean_h200_2026-12-04.md.
#pragma once

#include <cstdint>
#include <type_traits>

namespace sparge::mask {

// A pooled key. Through the read-only cache where an earlier launch wrote the pooled blocks (the separate pooling
// and selection kernels); from L2 (ld.cg) where this launch did (pool_select_fused.cuh): the read-only path is
// defined only for data that nothing writes while the kernel runs.
template <bool kPooledInThisLaunch>
__device__ __forceinline__ float load_pooled(const float* ptr) {
  if constexpr (kPooledInThisLaunch) {
    return __ldcg(ptr);
  } else {
    return __ldg(ptr);
  }
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// x = hi + lo, both TF32 bit patterns (lo rounded too): for the operand split once per CTA.
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(x - __uint_as_float(hi));
}

// The low part of x for the TF32 MMA, which reads an fp32 operand's bits as TF32 by ignoring the low 13 (so x
// itself serves as hi = x truncated to 11 significant bits): lo = x - hi exactly, |lo| < 2^-10 |x|, and the MMA
// truncates lo in turn, an error below 2^-20 |x|. Two instructions, against several for cvt.rna, which sm_90
// emulates. Finite x only (pooled means of finite inputs).
__device__ __forceinline__ uint32_t tf32_low_part(float x) {
  return __float_as_uint(x - __uint_as_float(__float_as_uint(x) & 0xffffe000u));
}

// d += a · b for one m16n8k8 TF32 tile (A row-major 16x8: 4 registers, B col-major 8x8: 2, C/D 16x8: 4).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint4& a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

// Fragment coordinates, g = lane / 4, t = lane % 4: A (row, d) = (g | g + 8, t | t + 4) for registers
// (x, y, z, w) = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4); B (d, key) = (t | t + 4, g); C (row, key) =
// (g | g + 8, 2t | 2t + 1).
template <int kRows>
constexpr int query_mtiles() {
  return (kRows + 15) / 16;
}
__host__ __device__ constexpr int query_ksteps(int head_dim) { return (head_dim + 7) / 8; }

// Words of shared memory the A fragments take: [k-step][m-tile][hi, lo][lane] x uint4.
template <int kRows>
__host__ __device__ constexpr int query_fragment_words(int head_dim) {
  return query_ksteps(head_dim) * query_mtiles<kRows>() * 2 * 32 * 4;
}

// The CTA's pooled query rows q_src[q0 + r], r < kRows (zero past nq, past kRows within the 16-row tile and
// for d >= head_dim), split into hi/lo A fragments, one uint4 per lane: every thread of the CTA takes part.
template <int kRows, int kThreads>
__device__ __forceinline__ void stage_query_fragments(const float* q_src, int q0, int nq, int head_dim,
                                                      uint4* frag, int tid) {
  constexpr int kMTiles = query_mtiles<kRows>();
  const int entries = query_ksteps(head_dim) * kMTiles * 32;  // (k-step, m-tile, lane)
  for (int idx = tid; idx < entries; idx += kThreads) {
    const int lane = idx & 31, m = (idx >> 5) % kMTiles, ks = (idx >> 5) / kMTiles;
    const int g = lane >> 2, t = lane & 3;
    uint32_t hi[4], lo[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = 16 * m + g + 8 * (i & 1), d = 8 * ks + t + 4 * (i >> 1);
      const bool inside = row < kRows && q0 + row < nq && d < head_dim;
      split_tf32(inside ? q_src[int64_t(q0 + row) * head_dim + d] : 0.f, hi[i], lo[i]);
    }
    frag[(ks * kMTiles + m) * 64 + lane] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    frag[(ks * kMTiles + m) * 64 + 32 + lane] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  }
}

// scores[r·nk + j] = scale · q_r·k_j for r < kRows, j < nk. frag: the A fragments (stage_query_fragments);
// k_src the (head_dim, k_ld) transposed pooled keys of the head. Each warp takes 64-key tiles (8 n-tiles of 8) in
// turn and every 16-row m-tile of the CTA. Lanes past nk read key nk - 1 and lanes past head_dim row
// head_dim - 1 (finite values: the A fragments are zero there, and columns past nk are not stored).
template <int kRows, int kWarps, int kWarpKeys, bool kPooledInThisLaunch>
__device__ __forceinline__ void scores_mma_tf32x3(const uint4* frag, const float* k_src, int k_ld, int head_dim,
                                                  int nk, float scale, float* scores, int warp, int lane) {
  constexpr int kMTiles = query_mtiles<kRows>();
  constexpr int kNTiles = kWarpKeys / 8;
  const int g = lane >> 2, t = lane & 3;
  const int ksteps = query_ksteps(head_dim);
  auto run_tile = [&](int tile, auto inside_tag) {
    constexpr bool kInside = decltype(inside_tag)::value;  // all 64 keys < nk: immediate offsets
    float acc[kMTiles][kNTiles][4];
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f;
    int col[kNTiles];
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) col[n] = kInside ? tile + g + 8 * n : min(tile + g + 8 * n, nk - 1);

    // B: this lane's two head-dim rows of each n-tile's key g (8 consecutive keys per d), loaded two k-steps
    // ahead (two register buffers) so that the L2 latency hides behind the MMAs of the steps in between.
    auto load_b = [&](float (&raw)[kNTiles][2], int ks) {
      const float* row0 = k_src + int64_t(min(8 * ks + t, head_dim - 1)) * k_ld;
      const float* row1 = k_src + int64_t(min(8 * ks + t + 4, head_dim - 1)) * k_ld;
      if constexpr (kInside) {
        row0 += tile + g;
        row1 += tile + g;
      }
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        raw[n][0] = load_pooled<kPooledInThisLaunch>(row0 + (kInside ? 8 * n : col[n]));
        raw[n][1] = load_pooled<kPooledInThisLaunch>(row1 + (kInside ? 8 * n : col[n]));
      }
    };
    // The low parts of step ks's raw B (the raw bits are the high parts), its buffer refilled with step ks + 2,
    // then the step's MMAs.
    auto step = [&](float (&raw)[kNTiles][2], int ks) {
      uint32_t b_hi[kNTiles][2], b_lo[kNTiles][2];
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          b_hi[n][half] = __float_as_uint(raw[n][half]);
          b_lo[n][half] = tf32_low_part(raw[n][half]);
        }
      if (ks + 2 < ksteps) load_b(raw, ks + 2);
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        const uint4 a_hi = frag[(ks * kMTiles + m) * 64 + lane];
        const uint4 a_lo = frag[(ks * kMTiles + m) * 64 + 32 + lane];
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          mma_tf32(acc[m][n], a_lo, b_hi[n][0], b_hi[n][1]);  // the small terms first
          mma_tf32(acc[m][n], a_hi, b_lo[n][0], b_lo[n][1]);
          mma_tf32(acc[m][n], a_hi, b_hi[n][0], b_hi[n][1]);
        }
      }
    };
    float even[kNTiles][2], odd[kNTiles][2];
    load_b(even, 0);
    if (ksteps > 1) load_b(odd, 1);
    for (int ks = 0; ks < ksteps; ks += 2) {
      step(even, ks);
      if (ks + 1 < ksteps) step(odd, ks + 1);
    }
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int n = 0; n < kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = 16 * m + g + 8 * (e >> 1), j = tile + 8 * n + 2 * t + (e & 1);
          if (row < kRows && (kInside || j < nk)) scores[row * nk + j] = acc[m][n][e] * scale;
        }
  };
  for (int tile = warp * kWarpKeys; tile < nk; tile += kWarps * kWarpKeys) {
    if (tile + kWarpKeys <= nk) {
      run_tile(tile, std::true_type{});
    } else {
      run_tile(tile, std::false_type{});
    }
  }
}

}  // namespace sparge::mask
