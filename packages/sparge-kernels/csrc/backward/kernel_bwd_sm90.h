// The Hopper backward kernel (dK, dV, and dQ accumulation): one CTA of 3 warpgroups per (key block of 64, head,
// batch), or per SM taking such tiles in turn (the persistent schedule); warpgroup 0 loads (TMA), warpgroups 1-2
// compute (wgmma) over the query blocks that kept the key block.
// A key block kept by no query block gets dK = dV = 0 and adds nothing to dQ.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "backward/dq_accumulate_bwd.h"
#include "backward/kernel_traits_bwd_sm90.h"
#include "backward/mainloop_bwd_sm90.h"
#include "backward/stage_skip_bwd_sm90.h"
#include "backward/tile_bwd.h"
#include "common/params.h"
#include "common/persistent_tiles_sm90.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"
#include "common/warp_specialized_sm90.h"

namespace sparge::bwd {

using namespace cute;

// The key blocks of every (batch, head), in the order a persistent schedule's CTAs claim them.
__host__ __device__ inline DynamicPersistentTileScheduler bwd_tile_scheduler(BwdParams const& p) {
  return DynamicPersistentTileScheduler{p.num_k_blocks, p.heads, p.batch, p.tile_counter};
}

// The consumers' share of one tile: dK, dV of its key block (zero when no query block kept it).
template <class Traits, bool kSignalKvFree, class Tile>
__device__ __forceinline__ void consume_tile(BwdParams const& p, Tile const& tile, typename Traits::SharedStorage& ss,
                                             typename Traits::Pipeline& pipeline, int thread_idx,
                                             typename Traits::Pipeline::PipelineState& read, int kv_phase) {
  using Element = typename Traits::Element;
  using Mainloop = MainloopBwdSm90<Traits>;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  // Profiling variants only (stage_skip_bwd_sm90.h): no dK/dV global stores. They come after the mainloop and
  // its last barrier or pipeline operation, so no thread waits on them.
  constexpr bool kStoreDkv = !(Traits::kSkipStages & kSkipDkvStore);
  Element* dk = tile.template at<Element>(p.dk, p.dk_stride, tile.row0);
  Element* dv = tile.template at<Element>(p.dv, p.dv_stride, tile.row0);
  if (tile.walk.trip_count() == 0) {  // no query attends to this key block: zero dK, dV (16 B stores)
    if constexpr (kStoreDkv) {
      constexpr int kChunks = kHeadDim / 8;
      const uint4 zero = make_uint4(0, 0, 0, 0);
      for (int i = thread_idx; i < tile.rows_valid * kChunks; i += Traits::kNumMmaThreads) {
        const int row = i / kChunks, chunk = i % kChunks;
        *reinterpret_cast<uint4*>(dk + row * p.dk_stride.row + chunk * 8) = zero;
        *reinterpret_cast<uint4*>(dv + row * p.dv_stride.row + chunk * 8) = zero;
      }
    }
    return;
  }
  typename Traits::TiledMmadKV mma_dkv;
  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  clear(acc_dk);
  clear(acc_dv);
  if constexpr (Traits::kDsSpill) {  // one mainloop for the whole tile: its pairs are consecutive
    if (int64_t(p.q_end[tile.bh * p.num_k_blocks + tile.block]) <= p.ds_spill_pairs) {
      Mainloop::template mma<kSignalKvFree, DqWork::kSpill>(p, tile, ss, pipeline, acc_dk, acc_dv, thread_idx, read,
                                                            kv_phase);
    } else if (p.deterministic) {
      Mainloop::template mma<kSignalKvFree, DqWork::kNone>(p, tile, ss, pipeline, acc_dk, acc_dv, thread_idx, read,
                                                           kv_phase);
    } else {
      Mainloop::template mma<kSignalKvFree>(p, tile, ss, pipeline, acc_dk, acc_dv, thread_idx, read, kv_phase);
    }
  } else {
    Mainloop::template mma<kSignalKvFree>(p, tile, ss, pipeline, acc_dk, acc_dv, thread_idx, read, kv_phase);
  }

  if constexpr (!kStoreDkv) {  // the dK/dV GEMMs stay: their accumulators need a reader (keep_alive)
    keep_alive(acc_dk, uint32_t(p.seqlen_k), reinterpret_cast<uint32_t*>(dk));
    keep_alive(acc_dv, uint32_t(p.seqlen_k), reinterpret_cast<uint32_t*>(dv));
  } else {
    Tensor coords =
        mma_dkv.get_thread_slice(thread_idx).partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
    store_accumulator_pairs(acc_dk, coords, dk, p.dk_stride.row, tile.rows_valid, p.scale);
    store_accumulator_pairs(acc_dv, coords, dv, p.dv_stride.row, tile.rows_valid, 1.f);
  }
}

// kPersistent false: one CTA per (key block, head, batch). true (opt-in, KernelOptions.backward_schedule): one CTA
// per SM takes key blocks in order from p.tile_counter; the producer loads the next tile's Q/dO stages into the same
// ring while the consumers finish the current one, and its K and V once barrier_kv_free says the last GEMM reading
// the current ones is done (the tile loops: common/persistent_tiles_sm90.h).
template <class Traits, bool kPersistent>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    attention_backward_sm90_kernel(__grid_constant__ const KernelParamsBwdSm90<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  using Mainloop = MainloopBwdSm90<Traits>;
  using Barrier = cutlass::arch::ClusterBarrier;
  extern __shared__ __align__(1024) char smem[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  BwdParams const& p = kp.args;
  const int warp_group = warp_group_idx();

  init_tile_barrier_and_prefetch(&ss.barrier_kv, kp.tma_q, kp.tma_dout, kp.tma_k, kp.tma_v);
  if constexpr (kPersistent) {
    if (threadIdx.x == 0) {
      Barrier::init(&ss.barrier_kv_free, Traits::kNumMmaThreads);
      ss.mailbox.init(Traits::kNumMmaThreads);
    }
  }
  Pipeline pipeline(ss.pipeline, tma_pipeline_params<Traits>(warp_group, Traits::kStageBytes), Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before anyone waits on them

  if constexpr (!kPersistent) {
    const auto tile = key_block_tile<Traits>(p);
    if (warp_group == 0) {
      enter_producer_role();
      if (threadIdx.x == 0 && tile.walk.trip_count() > 0) {
        auto write = cutlass::make_producer_start_state<Pipeline>();  // every stage starts empty
        Mainloop::load(kp, tile, ss, pipeline, write);
      }
    } else {
      const int thread_idx = enter_consumer_role();
      typename Pipeline::PipelineState read;
      consume_tile<Traits, false>(p, tile, ss, pipeline, thread_idx, read, 0);
      if constexpr (Traits::kDsSpill) {
        if (thread_idx == 0) bulk_wait_all();  // the dS stores read smem, and the dQ kernel reads what they wrote
      }
    }
  } else {
    const auto scheduler = bwd_tile_scheduler(p);
    if (warp_group == 0) {
      enter_producer_role();
      if (threadIdx.x == 0) {
        auto write = cutlass::make_producer_start_state<Pipeline>();  // every stage starts empty
        produce_tiles(scheduler, ss.mailbox, &ss.barrier_kv_free, [&](TileCoord const& at, auto&& wait_kv_free) {
          const auto tile = key_block_tile<Traits>(p, at);
          if (tile.walk.trip_count() == 0) return false;
          wait_kv_free();
          Mainloop::load(kp, tile, ss, pipeline, write);
          return true;
        });
      }
    } else {
      const int thread_idx = enter_consumer_role();
      typename Pipeline::PipelineState read;
      consume_tiles(scheduler, ss.mailbox, [&](TileCoord const& at, int kv_phase) {
        const auto tile = key_block_tile<Traits>(p, at);
        consume_tile<Traits, true>(p, tile, ss, pipeline, thread_idx, read, kv_phase);
        return tile.walk.trip_count() > 0;
      });
      if constexpr (Traits::kDsSpill) {
        if (thread_idx == 0) bulk_wait_all();
      }
    }
  }
}

}  // namespace sparge::bwd
