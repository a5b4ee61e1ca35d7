// The Hopper forward kernel: one CTA of 3 warpgroups per (query block of 128 rows, head, batch);
// warpgroup 0 loads (TMA), warpgroups 1-2 compute (wgmma) over the kept key blocks only.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "forward/epilogue_fwd_sm90.h"
#include "forward/kernel_traits_fwd_sm90.h"
#include "forward/mainloop_fwd_sm90.h"
#include "common/params.h"
#include "forward/softmax.h"
#include "forward/tile_scheduler.h"
#include "common/utils.h"
#include "common/warp_specialized_sm90.h"

namespace sparge::fwd {

using namespace cute;

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    attention_forward_sm90_kernel(__grid_constant__ const KernelParamsSm90<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Mainloop = MainloopFwdSm90<Traits>;
  extern __shared__ __align__(1024) char smem[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  FwdParams const& p = kp.args;
  const WorkTile tile = StaticTileScheduler::tile();
  const BlockSparseWalk<Traits::kBlockN> walk(p.kv_count, p.kv_index, int64_t(tile.batch) * p.heads + tile.head,
                                              p.num_q_blocks, tile.m_block, p.num_k_blocks, p.seqlen_k);
  const int warp_group = warp_group_idx();

  init_tile_barrier_and_prefetch(&ss.barrier_q, kp.tma_q, kp.tma_k, kp.tma_v);
  auto pipeline_params = tma_pipeline_params<Traits>(warp_group, Traits::kTmaBytesKVStage);
  Pipeline pipeline_k(ss.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(ss.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before anyone waits on them

  if (warp_group == 0) {
    enter_producer_role();
    if (threadIdx.x == 0 && walk.trip_count() > 0) {
      auto write = cutlass::make_producer_start_state<Pipeline>();  // every stage starts empty
      Mainloop::load(kp, tile, ss, pipeline_k, pipeline_v, walk, write);
    }
  } else {
    const int thread_idx = enter_consumer_role();
    typename Traits::TiledMmaPV mma_pv;
    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
    clear(acc_o);
    constexpr int kRowsPerThread = decltype(size<0>(accumulator_as_rowcol(acc_o.layout())))::value;
    OnlineSoftmax<kRowsPerThread> softmax(p.scale_log2);
    typename Pipeline::PipelineState read;
    Mainloop::mma(p, ss, pipeline_k, pipeline_v, walk, acc_o, softmax, thread_idx, read);
    Tensor acc_o_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));
    auto lse = softmax.finalize(acc_o_rowcol, p.scale);
    EpilogueFwdSm90<Traits>::store(p, tile, acc_o, lse, thread_idx);
  }
}

}  // namespace sparge::fwd
