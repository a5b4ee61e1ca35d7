// Warp-wide reductions used by the mask kernels. The xor butterfly leaves the bitwise-same result in every
// lane (IEEE addition is commutative), so decisions taken on a reduced value are warp-uniform.
#pragma once

#include <cstdint>

namespace sparge::mask {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullWarp, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullWarp, x, offset));
  return x;
}

// Programmatic dependent launch (sm_90+): a kernel launched with launch_after_previous (mask_launch.cu) may
// start while the previous kernel on its stream drains; it waits here until that kernel's writes are visible.
// Elsewhere, or launched normally, this is a no-op.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Bit mask of the lanes below this one.
__device__ __forceinline__ uint32_t lanes_below(int lane) { return (1u << lane) - 1u; }

// row[begin, end) = -1 by one warp: 16-byte stores from the first 16-byte boundary on (a row of int32 starts
// 4-byte aligned), single words around them.
__device__ __forceinline__ void fill_minus_one(int32_t* row, int begin, int end, int lane) {
  const int misaligned = int((reinterpret_cast<uintptr_t>(row + begin) >> 2) & 3u);
  const int head = min(end, begin + ((4 - misaligned) & 3));
  const int quads = (end - head) >> 2;
  const int tail = head + 4 * quads;
  if (begin + lane < head) row[begin + lane] = -1;
  int4* vec = reinterpret_cast<int4*>(row + head);
  for (int i = lane; i < quads; i += 32) vec[i] = make_int4(-1, -1, -1, -1);
  if (tail + lane < end) row[tail + lane] = -1;
}

}  // namespace sparge::mask
