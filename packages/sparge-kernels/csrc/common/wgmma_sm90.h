// The wgmma call of the Hopper kernels (forward and backward): acc (+)= A · B on one or more warpgroups, A from
// shared memory (descriptors) or registers, B from shared memory. `wgmma_issue` only starts the batch (so several
// GEMMs can be in flight before one `warpgroup_wait`); `wgmma_gemm` also waits for it.
#pragma once

#include <cute/tensor.hpp>

namespace sparge {

using namespace cute;

template <class TiledMma>
constexpr bool kWgmmaAFromRegisters =
    !cute::is_base_of<GMMA::DescriptorIterator, typename TiledMma::FrgTypeA>::value;

// Starts acc (+)= A · B (kZeroInit: acc = A · B) and commits it as one batch; the caller waits
// (warpgroup_wait<N>) and then fences the accumulator with `wgmma_done`.
template <bool kZeroInit, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_issue(TiledMma& mma, FragA const& a, FragB const& b, Acc& acc) {
  if constexpr (kWgmmaAFromRegisters<TiledMma>) warpgroup_fence_operand(const_cast<FragA&>(a));
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), acc);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
}

// After warpgroup_wait: the accumulator (and a register A operand) may be touched again.
template <class Acc>
__device__ __forceinline__ void wgmma_done(Acc& acc) {
  warpgroup_fence_operand(acc);
}

// acc (+)= A · B; waits for the result before returning.
template <bool kZeroInit, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_gemm(TiledMma& mma, FragA const& a, FragB const& b, Acc& acc) {
  wgmma_issue<kZeroInit>(mma, a, b, acc);
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc);
  if constexpr (kWgmmaAFromRegisters<TiledMma>) warpgroup_fence_operand(const_cast<FragA&>(a));
}

}  // namespace sparge
