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

}  // namespace sparge::mask
