// Accumulating dQ across the key blocks that the dK/dV kernel walks (non-deterministic mode), and turning the fp32
// accumulator into dq. Two ways, same result up to summation order:
//   kAtomic      each thread adds its accumulator pairs to a row-major (B, H, Lq_pad, D) buffer with 8-byte
//                atomics (any SM >= 80; Hopper has float2 atomicAdd)
//   kBulkReduce  Hopper: each warp stages its accumulator fragment in shared memory in fragment order (16-byte
//                stores, conflict-free) and one lane issues a bulk async reduce-add (cp.reduce.async.bulk .add.f32)
//                of that contiguous 2-4 KB to global, so the L2 reduces whole lines and no thread waits on atomics.
//                The buffer then holds, per 64-row step chunk, the fragments in (warp, float4 slot, lane) order; the
//                convert kernel maps them back through the same MMA partition.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include <cstdint>

#include "backward/kernel_traits_bwd_sm80.h"
#include "common/cuda_check.h"
#include "common/params.h"

namespace sparge::bwd {

using namespace cute;

enum class DqMode { kNone, kAtomic, kBulkReduce };

// ------------------------------------------------------------------------------------------ bulk async copies
CUTE_DEVICE void bulk_reduce_add_f32(float* gmem, const float* smem, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t saddr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
               "r"(saddr), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#else
  __trap();  // the host selects kBulkReduce only on SM >= 90
#endif
}

// A bulk async copy of `bytes` (a multiple of 16, both addresses 16 B aligned) from shared to global memory, in
// this thread's bulk group (the same waits as the reduce-adds).
CUTE_DEVICE void bulk_store(void* gmem, const void* smem, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t saddr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(gmem), "r"(saddr), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#else
  __trap();  // only the Hopper kernels spill
#endif
}

// Waits until this thread's bulk operations have finished reading shared memory (the stage may be rewritten).
CUTE_DEVICE void bulk_wait_smem_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}

// Waits until this thread's bulk operations are complete.
CUTE_DEVICE void bulk_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

// Orders this thread's generic-proxy shared-memory writes before later async-proxy (bulk copy) reads.
CUTE_DEVICE void fence_shared_for_async_proxy() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// ------------------------------------------------------------------------------------------- accumulate
// kAtomic: acc (an accumulator of the (64, D) dQ step tile) += into row-major rows starting at dq_rows.
template <int kHeadDim, class Acc, class Coords>
CUTE_DEVICE void accumulate_dq_atomic(Acc const& acc, Coords const& coords, float* dq_rows) {
  // Accumulator values 2j, 2j+1 are neighbouring columns of one row: one 8-byte atomic each.
  CUTE_UNROLL
  for (int m = 0; m < size<1>(acc); ++m) {
    CUTE_UNROLL
    for (int n = 0; n < size<2>(acc); ++n) {
      CUTE_UNROLL
      for (int half = 0; half < 2; ++half) {
        const auto coord = coords(2 * half, m, n);
        float* dst = dq_rows + get<0>(coord) * kHeadDim + get<1>(coord);
        const float x = acc(2 * half, m, n), y = acc(2 * half + 1, m, n);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        atomicAdd(reinterpret_cast<float2*>(dst), make_float2(x, y));
#else
        atomicAdd(dst, x);
        atomicAdd(dst + 1, y);
#endif
      }
    }
  }
}

// kBulkReduce: this warp's fragments -> its smem stage (32 lanes x size(acc) floats) -> bulk reduce-add into the
// warp's slice of the step chunk at chunk (fragment order). Only lane 0 issues and waits on bulk operations.
template <class Acc>
CUTE_DEVICE void accumulate_dq_bulk(Acc const& acc, float* warp_stage, float* warp_chunk, int lane) {
  constexpr int kFrag = decltype(size(acc))::value;
  static_assert(kFrag % 4 == 0);
  if (lane == 0) bulk_wait_smem_read();  // the previous step's reduce has read the stage
  __syncwarp();
  float4* stage = reinterpret_cast<float4*>(warp_stage);
  CUTE_UNROLL
  for (int j = 0; j < kFrag / 4; ++j) {
    stage[j * 32 + lane] = make_float4(acc(4 * j), acc(4 * j + 1), acc(4 * j + 2), acc(4 * j + 3));
  }
  fence_shared_for_async_proxy();
  __syncwarp();
  if (lane == 0) bulk_reduce_add_f32(warp_chunk, warp_stage, uint32_t(kFrag * 32 * sizeof(float)));
}

// kBulkReduce, read back into registers: acc += this warp's fragments at warp_chunk, as accumulate_dq_bulk wrote
// them (float4 j of lane `lane` at [j·32 + lane]); acc has the partition the writer's had.
template <class Acc>
CUTE_DEVICE void add_dq_bulk_fragment(Acc& acc, const float* warp_chunk, int lane) {
  constexpr int kFrag = decltype(size(acc))::value;
  static_assert(kFrag % 4 == 0);
  const float4* src = reinterpret_cast<const float4*>(warp_chunk);
  CUTE_UNROLL
  for (int j = 0; j < kFrag / 4; ++j) {
    const float4 v = src[j * 32 + lane];
    acc(4 * j) += v.x;
    acc(4 * j + 1) += v.y;
    acc(4 * j + 2) += v.z;
    acc(4 * j + 3) += v.w;
  }
}

// ----------------------------------------------------------------------------------------------- convert
// What both fragment-order convert kernels read back: thread `lane` of a warp whose fragments start at src owns
// float4 j at src[j·32 + lane]; visit(row, col, x, y) gets each pair of neighbouring columns of one row (values
// 4j+2e, 4j+2e+1 of the MMA partition's coords) in the order the dK/dV kernel wrote them.
template <class Coords, class Visit>
CUTE_DEVICE void for_each_fragment_pair(const float4* src, int lane, Coords const& coords, Visit&& visit) {
  constexpr int kFrag = decltype(size(coords))::value;
  static_assert(kFrag % 4 == 0);
  CUTE_UNROLL
  for (int j = 0; j < kFrag / 4; ++j) {
    const float4 v = src[j * 32 + lane];
    const float pairs[2][2] = {{v.x, v.y}, {v.z, v.w}};
    CUTE_UNROLL
    for (int e = 0; e < 2; ++e) {
      const auto coord = coords(4 * j + 2 * e);
      visit(int(get<0>(coord)), int(get<1>(coord)), pairs[e][0], pairs[e][1]);
    }
  }
}

// kBulkReduce: one CTA per (64-row step chunk, head, batch); each thread reads back exactly the fragment slots its
// twin in the dK/dV kernel wrote and stores dq = value · scale at the (row, col) the MMA partition gives them.
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads) dq_convert_fragments_kernel(const BwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kM = Traits::kStepRows;
  constexpr int kD = Traits::kHeadDim;
  const int chunk = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int row0 = chunk * kM;
  if (row0 >= p.seqlen_q) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t bh = int64_t(b) * p.heads + h;

  typename Traits::TiledMmaKV tiled_mma;
  Tensor coords = tiled_mma.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));
  constexpr int kFrag = decltype(size(coords))::value;
  const float4* src =
      reinterpret_cast<const float4*>(p.dq_accum + (bh * p.padded_q + row0) * kD) + warp * (kFrag / 4) * 32;
  Element* dq = static_cast<Element*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head + row0 * p.dq_stride.row;
  const int rows_valid = p.seqlen_q - row0;
  for_each_fragment_pair(src, lane, coords, [&](int row, int col, float x, float y) {
    if (row < rows_valid) {
      Element out[2] = {Element(x * p.scale), Element(y * p.scale)};
      *reinterpret_cast<uint32_t*>(dq + row * p.dq_stride.row + col) = *reinterpret_cast<const uint32_t*>(out);
    }
  });
}

// The Hopper backward's bulk mode (KernelTraitsBwdSm90::kDqBulk): the same fragment order, over a whole 128-row
// query block and the dK/dV kernel's dQ wgmma partition (TiledMmadQ, 2 consumer warpgroups = kThreads threads):
// warp w's 32·F floats at block + w·32·F, float4 j of lane l at [j·32 + l]. One CTA per (query block, head,
// batch); thread t reads back what consumer thread t of the dK/dV kernel wrote (coalesced float4 loads), puts
// dq = value · scale into a row-major smem tile (4-byte stores, conflict-free with the 16 B row padding), and the
// CTA writes the block's rows inside Lq with 16-byte stores (the wgmma fragment's own rows would be 4-byte ones).
template <class TiledMma, int kM, int kD, int kThreads, typename Element>
__global__ void __launch_bounds__(kThreads) dq_convert_fragment_order_kernel(const BwdParams p) {
  static_assert(sizeof(Element) == 2 && kD % 8 == 0);
  constexpr int kPitch = kD + 8;  // elements per smem row: 16 B of padding
  __shared__ __align__(16) uint16_t tile[kM * kPitch];
  const int block = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int row0 = block * kM;
  if (row0 >= p.seqlen_q) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t bh = int64_t(b) * p.heads + h;

  TiledMma tiled_mma;
  Tensor coords = tiled_mma.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));
  constexpr int kFrag = decltype(size(coords))::value;
  static_assert(kFrag % 4 == 0 && kFrag * kThreads == kM * kD, "the threads cover the block once");
  const float4* src =
      reinterpret_cast<const float4*>(p.dq_accum + (bh * p.padded_q + row0) * kD) + warp * (kFrag / 4) * 32;
  for_each_fragment_pair(src, lane, coords, [&](int row, int col, float x, float y) {
    Element out[2] = {Element(x * p.scale), Element(y * p.scale)};
    *reinterpret_cast<uint32_t*>(&tile[row * kPitch + col]) = *reinterpret_cast<const uint32_t*>(out);
  });
  __syncthreads();
  Element* dq = static_cast<Element*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head + row0 * p.dq_stride.row;
  const int rows_valid = min(kM, p.seqlen_q - row0);
  constexpr int kChunks = kD / 8;  // 16 B each
  for (int i = tid; i < rows_valid * kChunks; i += kThreads) {
    const int row = i / kChunks, chunk = i % kChunks;
    *reinterpret_cast<uint4*>(dq + row * p.dq_stride.row + chunk * 8) =
        *reinterpret_cast<const uint4*>(&tile[row * kPitch + chunk * 8]);
  }
}

// DqMode::kAtomic: dq = dq_accum · scale, dq_accum row-major (B, H, Lq_pad, D); written with dq's strides.
template <int kHeadDim, typename Element>
__global__ void __launch_bounds__(256) dq_convert_rowmajor_kernel(const BwdParams p) {
  constexpr int kChunks = kHeadDim / 8;  // 8 elements per thread
  const int64_t total = int64_t(p.batch) * p.heads * p.seqlen_q * kChunks;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int chunk = int(idx % kChunks);
  const int64_t row = idx / kChunks;  // over (B, H, Lq)
  const int64_t bh = row / p.seqlen_q;
  const int i = int(row - bh * p.seqlen_q);
  const int b = int(bh / p.heads), h = int(bh % p.heads);
  const float4* src = reinterpret_cast<const float4*>(p.dq_accum + (bh * p.padded_q + i) * kHeadDim + chunk * 8);
  const float4 lo = src[0], hi = src[1];
  const float vals[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  uint4 packed;
  Element* out = reinterpret_cast<Element*>(&packed);
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = Element(vals[e] * p.scale);
  Element* dq = static_cast<Element*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head + i * p.dq_stride.row +
                chunk * 8;
  *reinterpret_cast<uint4*>(dq) = packed;
}

// Launches dq_convert_rowmajor_kernel over (B, H, Lq) (the atomic mode of both dK/dV kernels).
template <int kHeadDim, typename Element>
void launch_dq_convert_rowmajor(BwdParams const& p, cudaStream_t stream) {
  const int64_t chunks = int64_t(p.batch) * p.heads * p.seqlen_q * (kHeadDim / 8);
  dq_convert_rowmajor_kernel<kHeadDim, Element><<<dim3(unsigned((chunks + 255) / 256)), 256, 0, stream>>>(p);
  SPARGE_CHECK_LAUNCH("sparge backward dQ convert");
}

}  // namespace sparge::bwd
