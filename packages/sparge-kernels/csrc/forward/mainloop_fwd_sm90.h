// Mainloop of the Hopper forward (warp-specialised): the producer thread TMA-loads Q once and then the
// kept K/V blocks kv_index[b, h, i, :kv_count], two per smem stage (kept blocks 2s and 2s + 1 in the stage's key
// rows [0, 64) and [64, 128)), into a ring of stages (mbarrier pipeline); the two consumer warpgroups run
// S = Q·Kᵀ over the stage's 128 keys (wgmma, both operands in smem), the online softmax, and O += P·V (wgmma,
// P from registers), with stage s + 1's Q·Kᵀ and softmax overlapping stage s's P·V, releasing each stage as soon
// as its operand has been read. Both sides take their ring position by reference: the persistent CTA
// (kernel_fwd_sm90.h) carries it from tile to tile.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cmath>

#include "common/block_sparse.h"
#include "common/params.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"
#include "common/warp_specialized_sm90.h"
#include "common/wgmma_sm90.h"
#include "forward/kernel_traits_fwd_sm90.h"
#include "forward/softmax.h"

namespace sparge::fwd {

using namespace cute;

// The CTA's shape (kBlockM, kBlockN, kNumMmaThreads) is WarpSpecializedCtaSm90's, which the traits extend too.
template <class Traits>
struct MainloopFwdSm90 : WarpSpecializedCtaSm90 {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  using SharedStorage = typename Traits::SharedStorage;

  // Run by one thread of the producer warpgroup; `write` is the ring position of the tile's first stage (advanced
  // past its last).
  __device__ static void load(KernelParamsSm90<Traits> const& kp, TileCoord const& tile, SharedStorage& ss,
                              Pipeline& pipeline_k, Pipeline& pipeline_v, BlockSparseWalk<kBlockN> const& walk,
                              typename Pipeline::PipelineState& write) {
    Tensor mQ = kp.tma_q.get_tma_tensor(kp.shape_q);
    Tensor mK = kp.tma_k.get_tma_tensor(kp.shape_k);
    Tensor mV = kp.tma_v.get_tma_tensor(kp.shape_k);
    Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch), typename Traits::TileQ{}, make_coord(tile.block, _0{}));
    Tensor gK = local_tile(mK(_, _, tile.head, tile.batch), typename Traits::TileKV{}, make_coord(_, _0{}));
    Tensor gV = local_tile(mV(_, _, tile.head, tile.batch), typename Traits::TileKV{}, make_coord(_, _0{}));
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    // The TMA destinations: (64 keys, head dim, (half, stage)).
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKVHalves{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKVHalves{});
    auto [tQgQ, tQsQ] = tma_partition(kp.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tKgK, tKsK] = tma_partition(kp.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(kp.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

    // Rows past Lq / Lk are out of the TMA box's tensor bounds: the copy engine zero-fills them.
    arm_tile_barrier(&ss.barrier_q, Traits::kTmaBytesQ);
    copy(kp.tma_q.with(ss.barrier_q), tQgQ, tQsQ);
    const int kv_count = walk.trip_count();  // a local bound: the loop keeps its former (not unrolled) shape
    for (int slot = 0; slot < kv_count; slot += Traits::kBlocksPerStage) {
      // An odd count's last stage loads its block into both halves: the stage's transaction bytes stay fixed,
      // and the consumers mask the repeat.
      const int block_a = walk.block(slot);
      const int block_b = slot + 1 < kv_count ? walk.block(slot + 1) : block_a;
      const int half_a = Traits::kBlocksPerStage * write.index(), half_b = half_a + 1;
      pipeline_k.producer_acquire(write);
      auto* barrier_k = pipeline_k.producer_get_barrier(write);
      copy(kp.tma_k.with(*barrier_k), tKgK(_, block_a), tKsK(_, half_a));
      copy(kp.tma_k.with(*barrier_k), tKgK(_, block_b), tKsK(_, half_b));
      pipeline_v.producer_acquire(write);
      auto* barrier_v = pipeline_v.producer_get_barrier(write);
      copy(kp.tma_v.with(*barrier_v), tVgV(_, block_a), tVsV(_, half_a));
      copy(kp.tma_v.with(*barrier_v), tVgV(_, block_b), tVsV(_, half_b));
      ++write;
    }
  }

  // Run by the consumer warpgroups; thread_idx in [0, kNumMmaThreads). `read`: the ring position of the tile's
  // first stage (advanced past its last); q_phase: the phase of barrier_q that brings this tile's Q. Every thread
  // arrives on barrier_q_free once its last Q·Kᵀ of the tile has completed: the producer may then load the next Q.
  template <class AccO, class Softmax>
  __device__ static void mma(FwdParams const& p, SharedStorage& ss, Pipeline& pipeline_k,
                             Pipeline& pipeline_v, BlockSparseWalk<kBlockN> const& walk, AccO& acc_o,
                             Softmax& softmax, int thread_idx, typename Pipeline::PipelineState& read,
                             int q_phase) {
    typename Traits::TiledMmaQK mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(thread_idx);
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutVt{});
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);
    Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, N, K, stage) descriptors
    Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, N, K, stage) descriptors
    Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<Traits::kStageKeys>>{}));
    Tensor acc_o_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));

    const int kv_count = walk.trip_count();
    if (kv_count <= 0) return;
    wait_tile_barrier(&ss.barrier_q, q_phase);
    // S = Q·Kᵀ of the stage at `read`, masked and taken into the online softmax; returns the output's rescale.
    auto scores_of_stage = [&](auto& acc_s, int slot) {
      if (slot + Traits::kBlocksPerStage >= kv_count) cutlass::arch::ClusterBarrier::arrive(&ss.barrier_q_free);
      const int valid_b = slot + 1 < kv_count ? walk.valid(slot + 1) : 0;  // 0: the second half is a repeat
      return softmax_block_pair_scores<kBlockN>(softmax, acc_s, tScS, walk.valid(slot), valid_b);
    };

    // Stage 0: its scores alone (O is still zero: no rescale).
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<Traits::kStageKeys>>{});
    pipeline_k.consumer_wait(read);
    wgmma_gemm</*kZeroInit=*/true>(mma_qk, tSrQ, tSrK(_, _, _, read.index()), acc_s);
    pipeline_k.consumer_release(read);
    scores_of_stage(acc_s, 0);
    Tensor probs = convert_fragment<Element>(acc_s);
    Tensor tOrP = make_tensor(probs.data(), accumulator_as_a_operand(probs.layout()));
    auto read_v = read;  // the stage whose P·V is next
    ++read;

    // Each later stage (FA3's intra-warpgroup overlap): its Q·Kᵀ and the previous stage's P·V are issued
    // together, and its softmax runs while that P·V is still in flight; O is rescaled once the P·V has completed.
    for (int slot = Traits::kBlocksPerStage; slot < kv_count; slot += Traits::kBlocksPerStage) {
      pipeline_k.consumer_wait(read);
      wgmma_issue</*kZeroInit=*/true>(mma_qk, tSrQ, tSrK(_, _, _, read.index()), acc_s);
      pipeline_v.consumer_wait(read_v);
      wgmma_issue</*kZeroInit=*/false>(mma_pv, tOrP, tOrV(_, _, _, read_v.index()), acc_o);
      warpgroup_wait<1>();  // the Q·Kᵀ (committed first)
      wgmma_done(acc_s);
      pipeline_k.consumer_release(read);
      const auto rescale = scores_of_stage(acc_s, slot);
      warpgroup_wait<0>();  // the P·V
      wgmma_done(acc_o);
      warpgroup_fence_operand(probs);
      pipeline_v.consumer_release(read_v);
      Softmax::rescale_output(acc_o_rowcol, rescale);
      convert_fragment(acc_s, probs);
      read_v = read;
      ++read;
    }

    // The last stage's P·V.
    pipeline_v.consumer_wait(read_v);
    wgmma_gemm</*kZeroInit=*/false>(mma_pv, tOrP, tOrV(_, _, _, read_v.index()), acc_o);
    pipeline_v.consumer_release(read_v);
  }
};

}  // namespace sparge::fwd
