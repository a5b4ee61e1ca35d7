// The Hopper forward, a persistent kernel: one CTA of 3 warpgroups per SM walks query-block tiles taken in
// order from an atomic counter (DynamicPersistentTileScheduler; faster than one CTA per tile at 5% density and
// equal dense: tools/results/fwd_persistent_h200_2026-12-04.md). The producer thread loads tile after tile into
// the same K/V ring, so the next tile's first stages land while the consumers finish the current one, reloads Q
// once the consumers' last Q·Kᵀ of the previous tile has completed (barrier_q_free); the tile loops and their
// hand-offs are common/persistent_tiles_sm90.h's. Mainloop, softmax and epilogue: mainloop_fwd_sm90.h,
// softmax.h, epilogue_fwd_sm90.h.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/params.h"
#include "common/persistent_tiles_sm90.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"
#include "common/warp_specialized_sm90.h"
#include "forward/epilogue_fwd_sm90.h"
#include "forward/kernel_traits_fwd_sm90.h"
#include "forward/mainloop_fwd_sm90.h"
#include "forward/softmax.h"

namespace sparge::fwd {

using namespace cute;

// The query blocks of every (batch, head), in the order the CTAs claim them.
__host__ __device__ inline DynamicPersistentTileScheduler fwd_tile_scheduler(FwdParams const& p) {
  return DynamicPersistentTileScheduler{p.num_q_blocks, p.heads, p.batch, p.tile_counter};
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    attention_forward_sm90_kernel(__grid_constant__ const KernelParamsSm90<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Mainloop = MainloopFwdSm90<Traits>;
  using Barrier = cutlass::arch::ClusterBarrier;
  extern __shared__ __align__(1024) char smem[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  FwdParams const& p = kp.args;
  const auto scheduler = fwd_tile_scheduler(p);
  const int warp_group = warp_group_idx();

  init_tile_barrier_and_prefetch(&ss.barrier_q, kp.tma_q, kp.tma_k, kp.tma_v);
  if (threadIdx.x == 0) {
    Barrier::init(&ss.barrier_q_free, Traits::kNumMmaThreads);
    ss.mailbox.init(Traits::kNumMmaThreads);
  }
  auto pipeline_params = tma_pipeline_params<Traits>(warp_group, Traits::kTmaBytesKVStage);
  Pipeline pipeline_k(ss.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(ss.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before anyone waits on them

  auto walk_of = [&](TileCoord const& tile) {
    return BlockSparseWalk<Traits::kBlockN>(p.kv_count, p.kv_index, int64_t(tile.batch) * p.heads + tile.head,
                                            p.num_q_blocks, tile.block, p.num_k_blocks, p.seqlen_k);
  };

  if (warp_group == 0) {
    enter_producer_role();
    if (threadIdx.x == 0) {
      auto write = cutlass::make_producer_start_state<Pipeline>();  // every stage starts empty
      produce_tiles(scheduler, ss.mailbox, &ss.barrier_q_free, [&](TileCoord const& tile, auto&& wait_q_free) {
        const auto walk = walk_of(tile);
        if (walk.trip_count() == 0) return false;
        wait_q_free();
        Mainloop::load(kp, tile, ss, pipeline_k, pipeline_v, walk, write);
        return true;
      });
    }
  } else {
    const int thread_idx = enter_consumer_role();
    typename Pipeline::PipelineState read;
    consume_tiles(scheduler, ss.mailbox, [&](TileCoord const& tile, int q_phase) {
      const auto walk = walk_of(tile);
      typename Traits::TiledMmaPV mma_pv;
      Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
      clear(acc_o);
      constexpr int kRowsPerThread = decltype(size<0>(accumulator_as_rowcol(acc_o.layout())))::value;
      OnlineSoftmax<kRowsPerThread> softmax(p.scale_log2);
      Mainloop::mma(p, ss, pipeline_k, pipeline_v, walk, acc_o, softmax, thread_idx, read, q_phase);
      Tensor acc_o_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));
      auto lse = softmax.finalize(acc_o_rowcol, p.scale);
      EpilogueFwdSm90<Traits>::store(p, tile, acc_o, lse, thread_idx);
      return walk.trip_count() > 0;
    });
  }
}

}  // namespace sparge::fwd
