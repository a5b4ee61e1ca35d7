// The opening every warp-specialised Hopper kernel shares (forward and backward; as flash-attention hopper's
// kernels and CUTLASS 88_hopper_fmha): warpgroup 0 is the producer (one thread issues the TMA loads), the other
// warpgroups consume (wgmma); the one-shot barrier of the operands loaded once per tile (set up here, armed by the
// producer and waited on by the consumers in the mainloops), the TMA-fed pipeline's parameters and the register
// split (setmaxnreg) between the two roles. Each kernel branches on warp_group_idx() with a plain if/else (passing
// the role bodies as lambdas to one helper changed the generated code).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cstdint>

namespace sparge {

// The calling thread's warpgroup (0: the producer), made warp-uniform so the role branches do not diverge.
__device__ __forceinline__ int warp_group_idx() { return __shfl_sync(0xffffffff, int(threadIdx.x) / 128, 0); }

// Thread 0: initialises `barrier`, the transaction barrier (one arrival) of the operands loaded once per tile,
// and prefetches the TMA descriptors. The caller syncs the CTA before anyone waits on it.
template <class... Tma>
__device__ __forceinline__ void init_tile_barrier_and_prefetch(uint64_t* barrier, Tma const&... tma) {
  if (threadIdx.x == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(barrier, 1);
    (cute::prefetch_tma_descriptor(tma.get_tma_descriptor()), ...);
  }
}

// The producer thread, before it issues the once-per-tile loads: arms `barrier` (its one arrival) with their bytes.
__device__ __forceinline__ void arm_tile_barrier(uint64_t* barrier, uint32_t transaction_bytes) {
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(barrier, transaction_bytes);
}

// A consumer: waits until the once-per-tile loads have landed: the barrier's phase `phase` (0 for a CTA that
// loads one tile; a persistent CTA alternates 0, 1, ... per loaded tile).
__device__ __forceinline__ void wait_tile_barrier(uint64_t* barrier, int phase = 0) {
  cutlass::arch::ClusterTransactionBarrier::wait(barrier, phase);
}

// Parameters of a TMA-fed pipeline ring (`Traits::Pipeline`, a cutlass::PipelineTmaAsync): warpgroup 0 produces
// (thread 0 leads), the Traits::kNumMmaThreads consumer threads consume; each stage lands transaction_bytes.
template <class Traits>
__device__ __forceinline__ typename Traits::Pipeline::Params tma_pipeline_params(int warp_group,
                                                                                 uint32_t transaction_bytes) {
  using Pipeline = typename Traits::Pipeline;
  typename Pipeline::Params params;
  params.transaction_bytes = transaction_bytes;
  params.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  params.is_leader = threadIdx.x == 0;
  params.num_consumers = Traits::kNumMmaThreads;
  return params;
}

// The role split (setmaxnreg): the producer warpgroup, which only issues TMA loads, gives registers back and the
// consumers take them. 40 + 2 x 232 = 3 x 168, exactly what a 384-thread CTA holds from launch
// (__launch_bounds__(384, 1)): setmaxnreg.inc cannot take more than the CTA gave back, and waits forever if asked.
// The producer keeps 40, not 24: at 24 ptxas spilled its tile loop around every TMA issue (112 B in the forward,
// 68 B in the persistent backward); no consumer needs more than 232 (the largest, the persistent backward's, uses
// 195 registers).
inline constexpr int kProducerRegisters = 40;
inline constexpr int kConsumerRegisters = 232;
static_assert(kProducerRegisters + 2 * kConsumerRegisters == 3 * 168 && kProducerRegisters % 8 == 0 &&
                  kConsumerRegisters % 8 == 0,
              "setmaxnreg: the three warpgroups share the 3 x 168 registers of a (384, 1) CTA, in steps of 8");

__device__ __forceinline__ void enter_producer_role() {
  cutlass::arch::warpgroup_reg_dealloc<kProducerRegisters>();
}

// ... and the consumer warpgroups take them; returns the thread's index among the consumers, [0, kNumMmaThreads).
__device__ __forceinline__ int enter_consumer_role() {
  cutlass::arch::warpgroup_reg_alloc<kConsumerRegisters>();
  return int(threadIdx.x) - 128;
}

}  // namespace sparge
