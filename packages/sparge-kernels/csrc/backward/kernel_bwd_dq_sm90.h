// The dS spill mode's second half (KernelOptions.dq_accumulate == "spill"): dQ of one query block = scale · Σ dS·K
// over its kept key blocks, in kv_index order, from the dS tiles the dK/dV kernel spilled (BwdParams::ds_spill)
// and K; no atomics, so dQ is bitwise reproducible whenever every key block spilled. Key blocks that did not spill
// (their pairs did not fit the buffer) added their dQ into dq_accum on the bulk path; a query block that has any
// adds that fragment (the same accumulator partition, kernel_traits_bwd_dq_sm90.h) before the scale. In
// deterministic mode there is no accumulator: such a query block is the SM80 dQ kernel's, and this one skips it.
//   producer (one thread): per spilled key block, its K tile (TMA) and its dS tile (one bulk copy) into a stage;
//   consumers (2 warpgroups, 64 rows each): dQ += dS·K (wgmma, smem x smem), then dq = dQ · scale.
// Also here: spill_pairs_kernel, which numbers the spilled tiles for this kernel (BwdParams::kv_pair) and zeroes
// the dq_accum blocks the bulk path will add into.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cstdint>

#include "backward/dq_accumulate_bwd.h"
#include "backward/kernel_traits_bwd_dq_sm90.h"
#include "backward/tile_bwd.h"
#include "common/cuda_check.h"
#include "common/params.h"
#include "common/persistent_tiles_sm90.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"
#include "common/warp_specialized_sm90.h"
#include "common/wgmma_sm90.h"

namespace sparge::bwd {

using namespace cute;

// kv_pair[bh, m, j] for the j-th kept key block n of query block m: the spilled tile of pair (m, n), or -1 when n
// took the bulk path. The dK/dV kernel numbers key block n's tiles q_end[bh, n] - q_count[bh, n] + (slot of m in
// q_index[bh, n]); this finds that slot by binary search (q_index rows ascend). One CTA per (query block, head,
// batch), a thread per kept key block. A query block with a key block on the bulk path gets its 128 x D floats of
// dq_accum zeroed here, before the dK/dV kernel adds into them; the others are neither written nor read, so the
// spill mode needs no zero-filled accumulator. Deterministic mode (no accumulator): such a query block gets -1 for
// every key block instead, so that the dQ kernel leaves it to the SM80 dQ kernel, which recomputes all of it.
template <int kHeadDim>
__global__ void __launch_bounds__(128) spill_pairs_kernel(const BwdParams p) {
  constexpr int kThreads = 128;
  __shared__ int any_bulk;
  const int m = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * p.heads + h;
  const int64_t row = bh * p.num_q_blocks + m;
  const int count = p.kv_count[row];
  const int32_t* kept = p.kv_index + row * p.num_k_blocks;
  int32_t* pairs = p.kv_pair + row * p.num_k_blocks;
  if (threadIdx.x == 0) any_bulk = 0;
  __syncthreads();
  for (int j = threadIdx.x; j < count; j += kThreads) {
    const int64_t key_tile = bh * p.num_k_blocks + kept[j];
    const int end = p.q_end[key_tile];
    int pair = -1;
    if (end <= p.ds_spill_pairs) {
      const int q_count = p.q_count[key_tile];
      const int32_t* queries = p.q_index + key_tile * p.num_q_blocks;
      int lo = 0, hi = q_count;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (queries[mid] < m) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      // Always found in a valid mask; the check keeps a malformed one from reading past the key block's tiles.
      if (lo < q_count && queries[lo] == m) pair = end - q_count + lo;
    }
    pairs[j] = pair;
    if (pair < 0) any_bulk = 1;
  }
  __syncthreads();
  if (any_bulk && p.deterministic) {
    for (int j = threadIdx.x; j < count; j += kThreads) pairs[j] = -1;
  } else if (any_bulk) {
    constexpr int kBlockM = MaskBlockTiles::kBlockM;
    float4* block = reinterpret_cast<float4*>(p.dq_accum + (bh * p.padded_q + int64_t(m) * kBlockM) * kHeadDim);
    for (int i = threadIdx.x; i < kBlockM * kHeadDim / 4; i += kThreads) block[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

template <int kHeadDim>
void launch_spill_pairs(BwdParams const& p, cudaStream_t stream) {
  spill_pairs_kernel<kHeadDim>
      <<<dim3(unsigned(p.num_q_blocks), unsigned(p.heads), unsigned(p.batch)), 128, 0, stream>>>(p);
  SPARGE_CHECK_LAUNCH("sparge backward dS spill pairs");
}

// The producer thread: the stages of one query block's spilled key blocks (none if it has none). `write`: the
// ring position, carried from tile to tile.
template <class Traits, class Tile>
__device__ __forceinline__ void load_dq_tile(KernelParamsBwdDqSm90<Traits> const& kp, Tile const& tile,
                                             typename Traits::SharedStorage& ss, typename Traits::Pipeline& pipeline,
                                             typename Traits::Pipeline::PipelineState& write) {
  using Element = typename Traits::Element;
  constexpr int kDsTileElems = int(Traits::kDsTileBytes / sizeof(Element));
  BwdParams const& p = kp.args;
  const int32_t* pairs = p.kv_pair + (tile.bh * p.num_q_blocks + tile.block) * p.num_k_blocks;
  Tensor mK = kp.tma_k.get_tma_tensor(kp.shape_k);
  Tensor gK = local_tile(mK(_, _, tile.head, tile.batch), typename Traits::TileKV{}, make_coord(_, _0{}));
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
  auto [tKgK, tKsK] = tma_partition(kp.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  const char* ds_spill = static_cast<const char*>(p.ds_spill);
  const int count = tile.walk.trip_count();
  // The next slot's pair and key block are loaded before this slot's stage is acquired: a stage is short (one
  // 128 x D x 64 GEMM), so two dependent L2 round trips per stage would hold the ring back.
  int next_pair = count > 0 ? pairs[0] : -1;
  int next_block = count > 0 ? tile.walk.block(0) : 0;
  for (int slot = 0; slot < count; ++slot) {
    const int pair = next_pair, block = next_block;
    if (slot + 1 < count) {
      next_pair = pairs[slot + 1];
      next_block = tile.walk.block(slot + 1);
    }
    if (pair < 0) continue;  // its dQ is in dq_accum
    pipeline.producer_acquire(write);  // also arms the stage's barrier with kStageBytes
    uint64_t* full = pipeline.producer_get_barrier(write);
    const int stage = write.index();
    copy(kp.tma_k.with(*full), tKgK(_, block), tKsK(_, stage));
    SM90_BULK_COPY_G2S::copy(ds_spill + int64_t(pair) * Traits::kDsTileBytes, full,
                             ss.ds.data() + stage * kDsTileElems, Traits::kDsTileBytes);
    ++write;
  }
}

// The consumer warpgroups (thread_idx in [0, kNumMmaThreads)): dQ of one query block, written to dq.
template <class Traits, class Tile>
__device__ __forceinline__ void compute_dq_tile(BwdParams const& p, Tile const& tile,
                                                typename Traits::SharedStorage& ss,
                                                typename Traits::Pipeline& pipeline, int thread_idx,
                                                typename Traits::Pipeline::PipelineState& read) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int32_t* pairs = p.kv_pair + (tile.bh * p.num_q_blocks + tile.block) * p.num_k_blocks;
  typename Traits::TiledMmadQ mma;
  auto thr = mma.get_thread_slice(thread_idx);
  Tensor sdS = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutdS{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
  Tensor tdQrdS = thr.partition_fragment_A(sdS);  // (MMA, M, K, stage)
  Tensor tdQrKt = thr.partition_fragment_B(sKt);  // (MMA, N, K, stage)
  Tensor acc = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc);
  bool took_bulk_path = false;
  const int count = tile.walk.trip_count();
  for (int slot = 0; slot < count; ++slot) {
    if (pairs[slot] < 0) {
      took_bulk_path = true;
      continue;
    }
    pipeline.consumer_wait(read);
    const int stage = read.index();
    wgmma_issue</*kZeroInit=*/false>(mma, tdQrdS(_, _, _, stage), tdQrKt(_, _, _, stage), acc);
    warpgroup_wait<0>();  // nothing in flight across the back edge (ptxas would serialise every wgmma)
    wgmma_done(acc);
    pipeline.consumer_release(read);
    ++read;
  }

  if (took_bulk_path && p.deterministic) return;  // the SM80 dQ kernel makes this query block's dQ
  if (took_bulk_path) {  // the bulk path's fragment order: warp w's 32·F floats at w·32·F of the block
    constexpr int kWarpFloats = 32 * decltype(size(acc))::value;
    const float* block = p.dq_accum + (tile.bh * p.padded_q + int64_t(tile.row0)) * kHeadDim;
    add_dq_bulk_fragment(acc, block + (thread_idx / 32) * kWarpFloats, thread_idx % 32);
  }
  Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  store_accumulator_pairs(acc, coords, tile.template at<Element>(p.dq, p.dq_stride, tile.row0), p.dq_stride.row,
                          tile.rows_valid, p.scale);
}

// The query blocks of every (batch, head), in the order a persistent schedule's CTAs claim them.
__host__ __device__ inline DynamicPersistentTileScheduler dq_tile_scheduler(BwdParams const& p) {
  return DynamicPersistentTileScheduler{p.num_q_blocks, p.heads, p.batch, p.tile_counter};
}

// kPersistent false: one CTA per (query block, head, batch); true (p.tile_counter set): one per SM taking query
// blocks from the counter (common/persistent_tiles_sm90.h; nothing is loaded once per tile, so neither side ever
// reports a tile as loaded and the operands barrier is never used).
template <class Traits, bool kPersistent>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    attention_backward_dq_sm90_kernel(__grid_constant__ const KernelParamsBwdDqSm90<Traits> kp) {
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ __align__(1024) char smem[];
  auto& ss = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  BwdParams const& p = kp.args;
  const int warp_group = warp_group_idx();

  if (threadIdx.x == 0) {
    cute::prefetch_tma_descriptor(kp.tma_k.get_tma_descriptor());
    if constexpr (kPersistent) ss.mailbox.init(Traits::kNumMmaThreads);
  }
  Pipeline pipeline(ss.pipeline, tma_pipeline_params<Traits>(warp_group, Traits::kStageBytes), Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before anyone waits on them

  if (warp_group == 0) {
    enter_producer_role();
    if (threadIdx.x != 0) return;
    auto write = cutlass::make_producer_start_state<Pipeline>();  // every stage starts empty
    if constexpr (kPersistent) {
      produce_tiles(dq_tile_scheduler(p), ss.mailbox, nullptr, [&](TileCoord const& at, auto&&) {
        load_dq_tile<Traits>(kp, query_block_tile<Traits>(p, at), ss, pipeline, write);
        return false;
      });
    } else {
      load_dq_tile<Traits>(kp, query_block_tile<Traits>(p), ss, pipeline, write);
    }
  } else {
    const int thread_idx = enter_consumer_role();
    typename Pipeline::PipelineState read;
    if constexpr (kPersistent) {
      consume_tiles(dq_tile_scheduler(p), ss.mailbox, [&](TileCoord const& at, int) {
        compute_dq_tile<Traits>(p, query_block_tile<Traits>(p, at), ss, pipeline, thread_idx, read);
        return false;
      });
    } else {
      compute_dq_tile<Traits>(p, query_block_tile<Traits>(p), ss, pipeline, thread_idx, read);
    }
  }
}

}  // namespace sparge::bwd
