// Kernel 1 of mask prediction: the mean of every block of Q (block_q tokens) and K (block_k tokens), in one
// launch over both tensors. Memory-bound: one warp per block streams 16-byte chunks of its rows (coalesced along
// D), keeps kPoolUnroll loads in flight per lane, accumulates in fp32 and combines its lanes with a fixed shuffle
// tree (deterministic); no shared memory, no CTA barrier. A partial last block is the mean of its real tokens.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mask/mask_params.h"

namespace sparge::mask {

constexpr int kPoolThreads = 256;
constexpr int kPoolWarps = kPoolThreads / 32;
constexpr int kPoolUnroll = 4;  // loads in flight per lane (4 beat 8 and 16: mask_pool_pdl_h200_2026-12-03.md)

// Element types: raw storage and the conversion to fp32.
struct Bf16Elem {
  using Storage = uint16_t;
  __device__ __forceinline__ static float to_float(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }
};
struct Fp16Elem {
  using Storage = uint16_t;
  __device__ __forceinline__ static float to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
};
struct Fp32Elem {
  using Storage = float;
  __device__ __forceinline__ static float to_float(float x) { return x; }
};

template <typename S, int kVec>
struct alignas(sizeof(S) * kVec) Chunk {
  S v[kVec];
};

// Q and K are read exactly once, in 16-byte non-coherent loads. Without cache hints: L1::no_allocate with an
// L2::256B prefetch read at 3.76 TB/s against 4.06 on the H200 (tools/results/mask_select_lean_h200_2026-12-04.md).
template <typename S, int kVec>
__device__ __forceinline__ Chunk<S, kVec> load_once(const S* ptr) {
  Chunk<S, kVec> chunk;
  if constexpr (sizeof(chunk) == 16) {
    uint32_t w[4];
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
        : "l"(ptr));
    memcpy(&chunk, w, sizeof(chunk));
  } else {
    chunk = *reinterpret_cast<const Chunk<S, kVec>*>(ptr);
  }
  return chunk;
}

// Stores kVec consecutive floats of a q_pooled row: 16-byte (or 8-byte) stores where the address allows.
template <int kVec>
__device__ __forceinline__ void store_row(float* dst, const float (&v)[kVec]) {
  const auto addr = reinterpret_cast<std::uintptr_t>(dst);
  if constexpr (kVec % 4 == 0) {
    if (addr % 16 == 0) {
#pragma unroll
      for (int e = 0; e < kVec; e += 4)
        *reinterpret_cast<float4*>(dst + e) = make_float4(v[e], v[e + 1], v[e + 2], v[e + 3]);
      return;
    }
  } else if constexpr (kVec % 2 == 0) {
    if (addr % 8 == 0) {
#pragma unroll
      for (int e = 0; e < kVec; e += 2) *reinterpret_cast<float2*>(dst + e) = make_float2(v[e], v[e + 1]);
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < kVec; ++e) dst[e] = v[e];
}

// acc[e] += chunk.v[e] in fp32. bf16 pairs are widened from whole 32-bit words (shift / mask) so that the
// compiler does not split every load into 16-bit registers first (that doubles the registers held per load).
template <typename Elem, int kVec>
__device__ __forceinline__ void accumulate(float (&acc)[kVec], const Chunk<typename Elem::Storage, kVec>& chunk) {
  if constexpr (std::is_same_v<Elem, Bf16Elem> && kVec % 2 == 0) {
    uint32_t w[kVec / 2];
    memcpy(w, &chunk, sizeof(w));
#pragma unroll
    for (int i = 0; i < kVec / 2; ++i) {
      acc[2 * i] += __uint_as_float(w[i] << 16);
      acc[2 * i + 1] += __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[e] += Elem::to_float(chunk.v[e]);
  }
}

// Accumulates the first min(count, kRows) of kRows consecutive rows of this lane (ptr, ptr + step, ...): all
// loads are issued before the first add, so they are in flight together. The loads are predicated into
// zero-filled chunks and the adds are not: with unpredicated loads (a separate tail), ptxas interleaved each
// load with the adds of the previous one (~2 loads in flight); predicated branch-free adds gave 4 / 8 / 16
// back-to-back LDG.128 per iteration in the SASS (nvcc 13.0, sm_90a).
template <typename Elem, int kVec, int kSlots, int kRows>
__device__ __forceinline__ void accumulate_rows(float (&acc)[kSlots][kVec], const typename Elem::Storage* ptr,
                                                int64_t step, const bool (&valid)[kSlots], int count) {
  using S = typename Elem::Storage;
  Chunk<S, kVec> loaded[kRows][kSlots];
#pragma unroll
  for (int u = 0; u < kRows; ++u)
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      loaded[u][j] = Chunk<S, kVec>{};  // +0.0: adding it is exact (acc is never -0.0)
      if (u < count && valid[j]) loaded[u][j] = load_once<S, kVec>(ptr + u * step + 32 * j * kVec);
    }
#pragma unroll
  for (int u = 0; u < kRows; ++u)
#pragma unroll
    for (int j = 0; j < kSlots; ++j) accumulate<Elem, kVec>(acc[j], loaded[u][j]);
}

// The mean of one block task by one warp (task: the B·G·Nq query blocks first, then the B·G·Nk key blocks).
//
// Lane layout, with chunks = head_dim / kVec 16-byte (kVec-element) chunks per row:
//   chunks <= 32: lane = group * chunks + chunk, rps = 32 / chunks rows per load step (group g reads rows
//                 g, g + rps, ...); lanes with group >= rps idle. bf16 D=128: 16 lanes per row, 2 rows a step.
//   chunks >  32: every lane reads every row, chunks lane, lane + 32, ... (kSlots slots; D <= 256 means at
//                 most 8 accumulated floats per lane).
// Each lane keeps kUnroll loads in flight (kUnroll / kSlots rows x kSlots chunks), accumulates its rows in
// ascending order in fp32, then the groups sharing a chunk are combined by a fixed shuffle tree (deterministic).
template <typename Elem, int kVec, int kUnroll>
__device__ __forceinline__ void pool_block(const PoolParams& p, uint32_t task, uint32_t q_tasks, int lane) {
  using S = typename Elem::Storage;
  constexpr int kSlots = kVec >= 8 ? 1 : 8 / kVec;                           // chunks per lane when chunks > 32
  constexpr int kRowsPerIter = kUnroll / kSlots > 0 ? kUnroll / kSlots : 1;  // rows per lane per iteration

  const bool is_q = task < q_tasks;
  const StridedTokens in = is_q ? p.q : p.k;
  if (!is_q) task -= q_tasks;
  const uint32_t group_bh = task / uint32_t(in.num_blocks);
  const int block_idx = int(task - group_bh * uint32_t(in.num_blocks));
  const int b = int(group_bh / uint32_t(p.group_heads));
  const int h = p.head_begin + int(group_bh - uint32_t(b) * p.group_heads);
  const int64_t bh = int64_t(b) * p.heads + h;
  const int row0 = block_idx * in.block;
  const int rows = min(in.block, in.length - row0);  // real tokens of this block (partial last block)

  const int head_dim = p.head_dim;
  const int chunks = head_dim / kVec;
  const bool split = chunks <= 32;  // several rows per load step
  const int rps = split ? 32 / chunks : 1;
  const int group = split ? lane / chunks : 0;
  const int chunk0 = split ? lane - group * chunks : lane;
  const bool active = group < rps;

  float acc[kSlots][kVec];
#pragma unroll
  for (int j = 0; j < kSlots; ++j)
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[j][e] = 0.f;

  if (active) {
    bool valid[kSlots];  // slot j holds chunk chunk0 + 32 j
#pragma unroll
    for (int j = 0; j < kSlots; ++j) valid[j] = j == 0 || chunk0 + 32 * j < chunks;

    const int64_t step = int64_t(rps) * in.stride_l;  // between this lane's consecutive rows
    const S* ptr = static_cast<const S*>(in.ptr) + b * in.stride_b + h * in.stride_h +
                   int64_t(row0 + group) * in.stride_l + chunk0 * kVec;
    const int n = (rows - group + rps - 1) / rps;  // rows of this lane (>= 0)

    for (int i = 0; i < n; i += kRowsPerIter) {
      accumulate_rows<Elem, kVec, kSlots, kRowsPerIter>(acc, ptr, step, valid, n - i);
      ptr += kRowsPerIter * step;
    }
  }

  // Combine the rps groups of each chunk (split layout only; slot 0 is the only slot used there): a tree in
  // which group g (a multiple of 2s) adds group g + s, for s = 1, 2, 4, ... — same order on every run.
  for (int s = 1; s < rps; s <<= 1) {  // warp-uniform trip count
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float other = __shfl_down_sync(0xffffffffu, acc[0][e], s * chunks);
      if ((group & (2 * s - 1)) == 0 && group + s < rps) acc[0][e] += other;
    }
  }

  if (group != 0) return;
  const float count = float(rows);
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    const int chunk = chunk0 + 32 * j;
    if (chunk >= chunks) continue;
    float mean[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) mean[e] = __fdiv_rn(acc[j][e], count);  // IEEE division under fast math
    const int d0 = chunk * kVec;
    if (is_q) {
      store_row<kVec>(p.q_pooled + (bh * p.q.num_blocks + block_idx) * head_dim + d0, mean);
    } else {
      float* dst = p.k_pooled_t + (bh * head_dim + d0) * p.k_ld + block_idx;
#pragma unroll
      for (int e = 0; e < kVec; ++e) dst[int64_t(e) * p.k_ld] = mean[e];
    }
  }
}

// One warp per block task: grid = ceil(tasks / kPoolWarps) CTAs of kPoolThreads. (A grid-stride loop over
// the CTAs resident at once was slower on the H200: mask_pool_pdl_h200_2026-12-03.md.)
template <typename Elem, int kVec, int kUnroll = kPoolUnroll>
__global__ void __launch_bounds__(kPoolThreads) pool_blocks_kernel(const PoolParams p) {
  // 32-bit task arithmetic (no 64-bit division call): the launcher keeps B·G·(Nq + Nk) <= INT32_MAX.
  const uint32_t q_tasks = uint32_t(p.batch) * p.group_heads * p.q.num_blocks;
  const uint32_t tasks = q_tasks + uint32_t(p.batch) * p.group_heads * p.k.num_blocks;
  const uint32_t task = blockIdx.x * kPoolWarps + (threadIdx.x >> 5);
  if (task < tasks) pool_block<Elem, kVec, kUnroll>(p, task, q_tasks, int(threadIdx.x & 31));  // warp-uniform
}

}  // namespace sparge::mask
