// Kernel 1 of mask prediction: the mean of every block of Q (block_q tokens) and K (block_k tokens), in one
// launch over both tensors. Memory-bound: each thread streams 16-byte chunks of a row (coalesced along D),
// keeps kPoolUnroll loads in flight, accumulates in fp32, and the CTA reduces its row groups in a fixed order
// (deterministic). A partial last block is the mean of its real tokens.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "mask/mask_params.h"

namespace sparge::mask {

constexpr int kPoolThreads = 256;
constexpr int kPoolUnroll = 8;  // loads in flight per thread: a 128-token block of D=128 bf16 in one go

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

// Q and K are read exactly once: 16-byte chunks bypass L1 and ask L2 to fetch the whole 256-byte row segment.
template <typename S, int kVec>
__device__ __forceinline__ Chunk<S, kVec> load_once(const S* ptr) {
  Chunk<S, kVec> chunk;
  if constexpr (sizeof(chunk) == 16) {
    uint32_t w[4];
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
        : "l"(ptr));
    memcpy(&chunk, w, sizeof(chunk));
  } else {
    chunk = *reinterpret_cast<const Chunk<S, kVec>*>(ptr);
  }
  return chunk;
}

// Grid: one CTA per block, the B·G·Nq query blocks first, then the B·G·Nk key blocks (G: heads of the group).
template <typename Elem, int kVec>
__global__ void __launch_bounds__(kPoolThreads) pool_blocks_kernel(const PoolParams p) {
  using S = typename Elem::Storage;
  __shared__ float partial[kPoolThreads * kVec];  // [row group][D]

  const int head_dim = p.head_dim;
  const int chunks_per_row = head_dim / kVec;  // <= kPoolThreads (the launcher checks D)
  const int row_groups = kPoolThreads / chunks_per_row;
  const int tid = threadIdx.x;
  const int group = tid / chunks_per_row;
  const int chunk = tid - group * chunks_per_row;

  const int64_t q_tasks = int64_t(p.batch) * p.group_heads * p.q.num_blocks;
  int64_t task = blockIdx.x;
  const bool is_q = task < q_tasks;
  const StridedTokens in = is_q ? p.q : p.k;
  if (!is_q) task -= q_tasks;
  const int block_idx = int(task % in.num_blocks);
  const int64_t group_bh = task / in.num_blocks;
  const int h = p.head_begin + int(group_bh % p.group_heads);
  const int b = int(group_bh / p.group_heads);
  const int64_t bh = int64_t(b) * p.heads + h;
  const int row0 = block_idx * in.block;
  const int rows = min(in.block, in.length - row0);

  float acc[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) acc[e] = 0.f;

  if (group < row_groups) {
    const S* base = static_cast<const S*>(in.ptr) + b * in.stride_b + h * in.stride_h +
                    int64_t(row0) * in.stride_l + chunk * kVec;
    for (int r = group; r < rows; r += kPoolUnroll * row_groups) {
      Chunk<S, kVec> loaded[kPoolUnroll];
#pragma unroll
      for (int u = 0; u < kPoolUnroll; ++u) {
        const int row = r + u * row_groups;
        if (row < rows) loaded[u] = load_once<S, kVec>(base + int64_t(row) * in.stride_l);
      }
#pragma unroll
      for (int u = 0; u < kPoolUnroll; ++u) {
        if (r + u * row_groups < rows) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) acc[e] += Elem::to_float(loaded[u].v[e]);
        }
      }
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) partial[group * head_dim + chunk * kVec + e] = acc[e];
  }
  __syncthreads();

  const float count = float(rows);
  for (int d = tid; d < head_dim; d += kPoolThreads) {
    float sum = 0.f;
    for (int g = 0; g < row_groups; ++g) sum += partial[g * head_dim + d];
    const float mean = __fdiv_rn(sum, count);  // IEEE division even under --use_fast_math
    if (is_q) {
      p.q_pooled[(bh * p.q.num_blocks + block_idx) * head_dim + d] = mean;
    } else {
      p.k_pooled_t[(bh * head_dim + d) * p.k_ld + block_idx] = mean;
    }
  }
}

}  // namespace sparge::mask
