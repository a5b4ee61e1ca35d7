// The Hopper forward kernel: CTAs of 3 warpgroups (persistent, or one per tile; see tile_scheduler.h), each walking work tiles (query block of 128
// rows, head, batch); warpgroup 0 loads (TMA), warpgroups 1-2 compute (wgmma) over the kept key blocks only.
// The producer runs ahead into the next tile (its Q and first K/V blocks) while the consumers finish the
// current one, so per-tile latency (Q load, pipeline fill, epilogue) overlaps with work.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "forward/epilogue_fwd_sm90.h"
#include "forward/kernel_traits_sm90.h"
#include "forward/mainloop_fwd_sm90.h"
#include "forward/params.h"
#include "forward/softmax.h"
#include "forward/tile_scheduler.h"
#include "forward/utils.h"

namespace sparge::fwd {

using namespace cute;

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    attention_forward_sm90_kernel(__grid_constant__ const KernelParamsSm90<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Mainloop = MainloopFwdSm90<Traits>;
  using Scheduler = PersistentTileScheduler;
  extern __shared__ __align__(1024) char smem[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  AttentionForwardParams const& p = kp.args;
  const int num_tiles = p.num_q_blocks * p.heads * p.batch;
  const int warp_group = __shfl_sync(0xffffffff, int(threadIdx.x) / 128, 0);

  if (threadIdx.x == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(&ss.barrier_q, 1);
    cutlass::arch::ClusterBarrier::init(&ss.barrier_q_empty, Traits::kNumMmaThreads);
    for (int i = 0; i < 2; ++i) {
      cutlass::arch::ClusterBarrier::init(&ss.tile_full[i], 1);
      cutlass::arch::ClusterBarrier::init(&ss.tile_empty[i], Traits::kNumMmaThreads);
    }
    cute::prefetch_tma_descriptor(kp.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(kp.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(kp.tma_v.get_tma_descriptor());
  }
  typename Pipeline::Params pipeline_params;
  pipeline_params.transaction_bytes = Traits::kTmaBytesKV;
  pipeline_params.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipeline_params.is_leader = threadIdx.x == 0;
  pipeline_params.num_consumers = Traits::kNumMmaThreads;
  Pipeline pipeline_k(ss.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(ss.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised (and fenced by the pipelines) before anyone waits on them

  // The producer picks the tiles and publishes each index (then num_tiles as the end mark) to the consumers;
  // tiles with no kept block load nothing and bump no Q barrier phase.
  using TileBarrier = cutlass::arch::ClusterBarrier;
  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x == 0) {
      typename Pipeline::PipelineState write = cutlass::make_producer_start_state<Pipeline>();
      int q_iter = 0;
      for (int t = blockIdx.x, iter = 0;; t = Scheduler::next(p, t), ++iter) {
        const int slot = iter & 1;
        if (iter >= 2) TileBarrier::wait(&ss.tile_empty[slot], ((iter >> 1) - 1) & 1);
        ss.tile_ids[slot] = t < num_tiles ? t : num_tiles;
        TileBarrier::arrive(&ss.tile_full[slot]);
        if (t >= num_tiles) break;
        const WorkTile tile = Scheduler::tile(p, t);
        const int64_t row_block = (int64_t(tile.batch) * p.heads + tile.head) * p.num_q_blocks + tile.m_block;
        const int kv_count = p.kv_count[row_block];
        if (kv_count == 0) continue;
        Mainloop::load(kp, tile, ss, pipeline_k, pipeline_v, write, p.kv_index + row_block * p.num_k_blocks,
                       kv_count, q_iter);
        ++q_iter;
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<232>();
    const int thread_idx = int(threadIdx.x) - 128;
    typename Pipeline::PipelineState read;
    int q_iter = 0;
    for (int iter = 0;; ++iter) {
      const int slot = iter & 1;
      TileBarrier::wait(&ss.tile_full[slot], (iter >> 1) & 1);
      const int t = ss.tile_ids[slot];
      TileBarrier::arrive(&ss.tile_empty[slot]);
      if (t >= num_tiles) break;
      const WorkTile tile = Scheduler::tile(p, t);
      const int64_t row_block = (int64_t(tile.batch) * p.heads + tile.head) * p.num_q_blocks + tile.m_block;
      const int kv_count = p.kv_count[row_block];
      typename Traits::TiledMmaPV mma_pv;
      Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
      clear(acc_o);
      constexpr int kRowsPerThread = decltype(size<0>(accumulator_as_rowcol(acc_o.layout())))::value;
      OnlineSoftmax<kRowsPerThread> softmax(p.scale_log2);
      if (kv_count > 0) {
        Mainloop::mma(p, ss, pipeline_k, pipeline_v, read, p.kv_index + row_block * p.num_k_blocks, kv_count,
                      q_iter, acc_o, softmax, thread_idx);
        ++q_iter;
      }
      Tensor acc_o_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));
      auto lse = softmax.finalize(acc_o_rowcol, p.scale);
      EpilogueFwdSm90<Traits>::store(p, tile, acc_o, lse, thread_idx);
    }
  }
}

}  // namespace sparge::fwd
