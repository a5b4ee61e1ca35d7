// Mainloop of the Hopper backward (warp-specialised, one CTA per key block of 64 keys):
//   producer (one thread): K, V by TMA once; then per kept query block of the key block (q_index, ascending)
//     Q and dO (128 rows, TMA; rows past Lq are zero-filled by the copy engine) and the block's lse·log2e and
//     delta (bulk copies from the padded workspace) into one stage of a PipelineTmaAsync ring;
//   consumers (2 warpgroups, 64 query rows each), per stage:
//     S = Q·Kᵀ, dP = dO·Vᵀ (wgmma, smem x smem), P = exp2(S·scale·log2e − lse·log2e) with keys past Lk masked to
//     0 (common/block_sparse.h), dS = P∘(dP − delta); P and dS go to smem (bf16/fp16) so that
//     dV += Pᵀ·dO and dK += dSᵀ·Q can contract over all 128 rows of the block (each warpgroup owns half of the
//     head dim of dK and dV, in registers); dQ = dS·K (dS from registers) is added to the fp32 dQ accumulator:
//     Traits::kDqBulk false: 8-byte atomics (red.global.add.v2.f32) into the row-major buffer, converted by
//       dq_convert_rowmajor_kernel;
//     Traits::kDqBulk true: each warp stages its fragment in smem (16-byte stores in fragment order) and one lane
//       issues a bulk async reduce-add of it (8 KB at D=128) into the block's fragment-ordered slice of the
//       buffer, converted by dq_convert_fragment_order_kernel. Consumer warpgroup 0 stages in ss.dq_stage,
//       warpgroup 1 in sP/sdS (see kBarrierPdSRead below and kernel_traits_bwd_sm90.h for the smem budget).
// P/dS are single-buffered: two named barriers per stage order the warpgroups' writes against the previous
// stage's dK/dV reads (and, in bulk mode, the previous stage's bulk reads of warpgroup 1's staging).
// Both sides take their ring position by reference: a persistent CTA carries it from tile to tile, and its
// consumers say on barrier_kv_free when the tile's last GEMM reading K and V is done (kernel_bwd_sm90.h).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cstdint>
#include <cstring>

#include "backward/dq_accumulate_bwd.h"
#include "backward/kernel_traits_bwd_sm90.h"
#include "backward/stage_skip_bwd_sm90.h"
#include "backward/tile_bwd.h"
#include "common/block_sparse.h"
#include "common/params.h"
#include "common/utils.h"
#include "common/warp_specialized_sm90.h"
#include "common/wgmma_sm90.h"

namespace sparge::bwd {

using namespace cute;

// Profiling variants only (stage_skip_bwd_sm90.h). ptxas removes a wgmma, and the math feeding it, whose results
// nobody reads: skipping the dQ atomics would also drop the dQ GEMM, skipping the dK/dV stores the dK/dV GEMMs.
// A variant that skips the only reader of some registers passes them here instead: an XOR of their bits, stored
// to *dst only if it equals `never`, a runtime value the compiler cannot see through (nothing is written in
// practice, and dst is a valid address of an output whose contents the variant does not define anyway). Costs
// about one logic op per two registers, no memory traffic.
template <class Frag>
__device__ __forceinline__ void keep_alive(Frag const& frag, uint32_t never, uint32_t* dst) {
  using T = typename Frag::value_type;
  static_assert(sizeof(T) == 4 || sizeof(T) == 2);
  uint32_t bits = 0;
  CUTE_UNROLL
  for (int i = 0; i < size(frag); ++i) {
    const T x = frag(i);
    if constexpr (sizeof(T) == 4) {
      uint32_t w;
      memcpy(&w, &x, 4);
      bits ^= w;
    } else {
      uint16_t h;
      memcpy(&h, &x, 2);
      bits ^= uint32_t(h) << (16 * (i & 1));
    }
  }
  if (bits == never) *dst = bits;
}

// What one tile of the dK/dV kernel does for dQ: add dS·K into dq_accum (the default mode), spill its dS tiles
// (the spill mode, for key blocks that fit its buffer), or nothing (deterministic spill mode, key blocks that do
// not fit).
enum class DqWork { kAccumulate, kSpill, kNone };

// The CTA's shape (kBlockM, kBlockN, kNumMmaThreads) is WarpSpecializedCtaSm90's, which the traits extend too.
template <class Traits>
struct MainloopBwdSm90 : WarpSpecializedCtaSm90 {
  using Element = typename Traits::Element;
  using Pipeline = typename Traits::Pipeline;
  using SharedStorage = typename Traits::SharedStorage;
  using Tile = BwdTile<kBlockN, kBlockM>;
  static constexpr int kHeadDim = Traits::kHeadDim;
  // Named barriers of the consumer warpgroups (ids after CUTLASS's reserved ones).
  static constexpr uint32_t kBarrierPdSFree = 0;   // the previous stage's dK/dV GEMMs have read sP, sdS
  static constexpr uint32_t kBarrierPdSReady = 1;  // both warpgroups' rows of P and dS are in sP, sdS
  // Bulk dQ only: both warpgroups' dV/dK wgmmas of this stage are done, so sP/sdS are dead and warpgroup 1 may
  // stage its dQ there (warpgroup 0 arrives, warpgroup 1 waits).
  static constexpr uint32_t kBarrierPdSRead = 2;

  // What the consumers run: everything in production (kSkipStages = 0); a profiling variant skips some stages
  // (stage_skip_bwd_sm90.h). load() is the same in every variant; see mma() for why each skip keeps the ring,
  // the K/V barrier and the named barriers in step.
  static constexpr uint32_t kSkip = Traits::kSkipStages;
  static constexpr bool kLoadsOnly = (kSkip & kSkipConsumerMath) != 0;
  static constexpr bool kRunSdP = !kLoadsOnly;
  static constexpr bool kRunSoftmax = !kLoadsOnly && !(kSkip & kSkipSoftmax);
  static constexpr bool kRunPdSStore = !kLoadsOnly && !(kSkip & kSkipPdSStore);
  static constexpr bool kRunDkv = !kLoadsOnly && !(kSkip & kSkipDkvGemm);
  static constexpr bool kRunDq = !kLoadsOnly && !(kSkip & kSkipDqGemm);
  // "Atomics" here means the dQ accumulation into dq_accum, whichever way (Traits::kDqBulk) it goes.
  static constexpr bool kRunDqAtomics = kRunDq && !(kSkip & kSkipDqAtomics);
  static constexpr bool kDqBulk = Traits::kDqBulk;
  static_assert(!kDqBulk || Traits::kNumConsumerWarpgroups == 2, "bulk dQ staging: warpgroup 0 own, 1 in sP/sdS");

  // Run by one thread of the producer warpgroup; the tile has at least one kept query block. `write`: the ring
  // position of the tile's first stage (advanced past its last).
  __device__ static void load(KernelParamsBwdSm90<Traits> const& kp, Tile const& tile, SharedStorage& ss,
                              Pipeline& pipeline, typename Pipeline::PipelineState& write) {
    BwdParams const& p = kp.args;
    Tensor mQ = kp.tma_q.get_tma_tensor(kp.shape_q);
    Tensor mdO = kp.tma_dout.get_tma_tensor(kp.shape_q);
    Tensor mK = kp.tma_k.get_tma_tensor(kp.shape_k);
    Tensor mV = kp.tma_v.get_tma_tensor(kp.shape_k);
    auto tile_q = typename Traits::TileQ{};
    auto tile_kv = typename Traits::TileKV{};
    Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch), tile_q, make_coord(_, _0{}));    // (M, D, m_block)
    Tensor gdO = local_tile(mdO(_, _, tile.head, tile.batch), tile_q, make_coord(_, _0{}));  // (M, D, m_block)
    Tensor gK = local_tile(mK(_, _, tile.head, tile.batch), tile_kv, make_coord(tile.block, _0{}));  // (N, D)
    Tensor gV = local_tile(mV(_, _, tile.head, tile.batch), tile_kv, make_coord(tile.block, _0{}));
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutdO{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
    auto [tQgQ, tQsQ] = tma_partition(kp.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tdOgdO, tdOsdO] =
        tma_partition(kp.tma_dout, _0{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
    auto [tKgK, tKsK] = tma_partition(kp.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(kp.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

    // Keys past Lk are outside the tensor: TMA zero-fills them (and still counts the whole box's bytes).
    arm_tile_barrier(&ss.barrier_kv, 2 * Traits::kTmaBytesKV);
    copy(kp.tma_k.with(ss.barrier_kv), tKgK, tKsK);
    copy(kp.tma_v.with(ss.barrier_kv), tVgV, tVsV);

    // The workspace rows of (batch, head) are padded to Nq * 128, so every block's 512 B of row statistics exist
    // and are 16 B aligned (what a bulk copy needs).
    const float* lse_log2 = p.lse_log2 + tile.bh * p.padded_q;
    const float* delta = p.delta + tile.bh * p.padded_q;
    const int count = tile.walk.trip_count();
    for (int slot = 0; slot < count; ++slot) {
      const int m_block = tile.walk.block(slot);
      pipeline.producer_acquire(write);  // also arms the stage's barrier with kStageBytes
      uint64_t* full = pipeline.producer_get_barrier(write);
      const int stage = write.index();
      copy(kp.tma_q.with(*full), tQgQ(_, m_block), tQsQ(_, stage));
      copy(kp.tma_dout.with(*full), tdOgdO(_, m_block), tdOsdO(_, stage));
      SM90_BULK_COPY_G2S::copy(lse_log2 + m_block * kBlockM, full, ss.lse_log2.data() + stage * kBlockM,
                               Traits::kRowStatBytes);
      SM90_BULK_COPY_G2S::copy(delta + m_block * kBlockM, full, ss.delta.data() + stage * kBlockM,
                               Traits::kRowStatBytes);
      ++write;
    }
  }

  // Run by the consumer warpgroups, thread_idx in [0, kNumMmaThreads); acc_dk/acc_dv are TiledMmadKV accumulators
  // of the (64 keys, D) tile, zeroed by the caller. The tile has at least one kept query block. `read`: the ring
  // position of the tile's first stage (advanced past its last); kv_phase: the phase of barrier_kv that brings
  // the tile's K and V. kSignalKvFree: every thread arrives on barrier_kv_free once the tile's last GEMM reading
  // K or V (its last dQ GEMM) is done, so that the producer may load the next tile's.
  // kDqWork: what the tile does for dQ (DqWork). kSpill (Traits::kDsSpill, a tile whose pairs fit the spill
  // buffer): no dQ GEMM; once both warpgroups' dS rows are in sdS, consumer thread 0 bulk-stores the tile to its
  // pair's place in p.ds_spill (waited for, like the bulk dQ's, before the next stage's P/dS stores; completed
  // before the CTA exits, kernel_bwd_sm90.h). kNone (the spill mode's deterministic tiles that do not fit): no dQ
  // work at all (the SM80 dQ kernel makes their query blocks' dQ).
  template <bool kSignalKvFree = false, DqWork kDqWork = DqWork::kAccumulate, class AccdKV>
  __device__ static void mma(BwdParams const& p, Tile const& tile, SharedStorage& ss, Pipeline& pipeline,
                             AccdKV& acc_dk, AccdKV& acc_dv, int thread_idx, typename Pipeline::PipelineState& read,
                             int kv_phase = 0) {
    static_assert(kDqWork == DqWork::kAccumulate || (Traits::kDsSpill && kSkip == 0), "spill-mode tiles only");
    constexpr bool kSpillDs = kDqWork == DqWork::kSpill;
    constexpr bool kDq = kRunDq && kDqWork == DqWork::kAccumulate;                  // the dQ GEMM runs
    constexpr bool kDqAccumulate = kRunDqAtomics && kDqWork == DqWork::kAccumulate;  // and adds into dq_accum
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmadKV mma_dkv;
    typename Traits::TiledMmadQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(thread_idx);
    auto thr_dkv = mma_dkv.get_thread_slice(thread_idx);
    auto thr_dq = mma_dq.get_thread_slice(thread_idx);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutdO{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutKV{});
    Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutdOt{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
    Tensor sP = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutPdS{});
    Tensor sdS = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutPdS{});
    Tensor sPt = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutPdSt{});
    Tensor sdSt = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutPdSt{});

    // wgmma operand descriptors (smem) and fragments.
    Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);      // (MMA, M, K, stage)
    Tensor tSrK = thr_sdp.partition_fragment_B(sK);      // (MMA, N, K)
    Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);   // (MMA, M, K, stage)
    Tensor tdPrV = thr_sdp.partition_fragment_B(sV);     // (MMA, N, K)
    Tensor tdVrPt = thr_dkv.partition_fragment_A(sPt);   // (MMA, M, K)
    Tensor tdVrdOt = thr_dkv.partition_fragment_B(sdOt);  // (MMA, N, K, stage)
    Tensor tdKrdSt = thr_dkv.partition_fragment_A(sdSt);  // (MMA, M, K)
    Tensor tdKrQt = thr_dkv.partition_fragment_B(sQt);    // (MMA, N, K, stage)
    Tensor tdQrKt = thr_dq.partition_fragment_B(sKt);     // (MMA, N, K)

    // (query row in the block, key) of every S/dP accumulator element, its place in sP/sdS, and (row, dim) of dQ.
    Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    auto copy_pds = make_tiled_copy_C(typename Traits::SmemCopyAtomPdS{}, mma_sdp);
    auto thr_copy_pds = copy_pds.get_thread_slice(thread_idx);
    Tensor tPsP = thr_copy_pds.partition_D(sP);
    Tensor tdSsdS = thr_copy_pds.partition_D(sdS);
    Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));

    // Bulk dQ: this thread's warp among the consumers [0, 8), its warpgroup's staging and its slice of a block.
    const int lane = thread_idx % 32, warp = thread_idx / 32;
    constexpr int kDqWarpFloats = 32 * decltype(size(tdQcdQ))::value;  // 16 rows x D
    float* dq_warp_stage = (warp < 4 ? ss.dq_stage_floats() : reinterpret_cast<float*>(ss.p.data())) +
                           (warp % 4) * kDqWarpFloats;
    static_assert(4 * kDqWarpFloats == Traits::kDqSlabFloats);

    const int keys_valid = tile.rows_valid;
    const int count = tile.walk.trip_count();
    float* dq_accum = p.dq_accum + tile.bh * p.padded_q * kHeadDim;
    // Spill: this tile's first pair (its slots follow in q_index order).
    char* ds_spill = nullptr;
    if constexpr (kSpillDs) {
      const int64_t first_pair = int64_t(p.q_end[tile.bh * p.num_k_blocks + tile.block]) - count;
      ds_spill = static_cast<char*>(p.ds_spill) + first_pair * Traits::kDsTileBytes;
    }

    wait_tile_barrier(&ss.barrier_kv, kv_phase);
    for (int slot = 0; slot < count; ++slot) {
      const int m_block = tile.walk.block(slot);
      pipeline.consumer_wait(read);
      const int stage = read.index();
      const float* lse_log2 = ss.lse_log2.data() + stage * kBlockM;
      const float* delta = ss.delta.data() + stage * kBlockM;

      Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      // Loads only: no wgmma is issued, so none is waited for; the stage was still waited for above.
      if constexpr (kRunSdP) {
        wgmma_issue</*kZeroInit=*/true>(mma_sdp, tSrQ(_, _, _, stage), tSrK, acc_s);
        wgmma_issue</*kZeroInit=*/true>(mma_sdp, tdPrdO(_, _, _, stage), tdPrV, acc_dp);
        warpgroup_wait<1>();  // S is done; dP may still run
        wgmma_done(acc_s);
        // Rows past Lq have lse·log2e = +inf in the workspace, so their P is 0 like the masked keys'.
        // No softmax: registers only (the stage's lse·log2e and delta are loaded but not read).
        if constexpr (kRunSoftmax) probs_with_tail_mask<kBlockN>(acc_s, tScS, keys_valid, p.scale_log2, lse_log2);
        warpgroup_wait<0>();
        wgmma_done(acc_dp);
        if constexpr (kRunSoftmax) {
          CUTE_UNROLL
          for (int i = 0; i < size(acc_dp); ++i) acc_dp(i) = acc_s(i) * (acc_dp(i) - delta[get<0>(tScS(i))]);
        }
      }
      Tensor rP = make_tensor<Element>(acc_s.layout());
      Tensor rdS = make_tensor<Element>(acc_dp.layout());
      if constexpr (kRunSdP) {
        convert_fragment(acc_s, rP);
        convert_fragment(acc_dp, rdS);
      }
      if constexpr (kRunSdP && !kRunPdSStore) {  // P (and dS without the dQ GEMM) would have no reader left
        keep_alive(rP, uint32_t(p.seqlen_q), reinterpret_cast<uint32_t*>(dq_accum));
        keep_alive(rdS, uint32_t(p.seqlen_q), reinterpret_cast<uint32_t*>(dq_accum));
      }

      // Bulk dQ: the previous stage's bulk reduce-adds must have read their staging (warpgroup 1's is sP/sdS,
      // written below by both warpgroups) before the barrier; issued a whole stage ago, so rarely a wait.
      // Spill kernels wait in every kind of tile: the previous dS store may be the last stage of the previous
      // tile (persistent schedule), whichever path this tile takes.
      if constexpr ((kDqBulk && kDqAccumulate) || Traits::kDsSpill) {
        if (lane == 0) bulk_wait_smem_read();
      }
      // Both named barriers stay in every variant: each is a full rendezvous of the 256 consumer threads, which
      // all run this same code, so skipping the stores between them cannot leave one warpgroup waiting.
      cutlass::arch::NamedBarrier::sync(kNumMmaThreads, kBarrierPdSFree);
      if constexpr (kRunPdSStore) {
        cute::copy(copy_pds, thr_copy_pds.retile_S(rP), tPsP);
        cute::copy(copy_pds, thr_copy_pds.retile_S(rdS), tdSsdS);
      }
      cutlass::arch::fence_view_async_shared();  // generic-proxy stores -> visible to wgmma (async proxy)
      cutlass::arch::NamedBarrier::sync(kNumMmaThreads, kBarrierPdSReady);
      if constexpr (kSpillDs) {  // read by the copy engine beside the dV/dK wgmmas' reads
        if (thread_idx == 0) {
          bulk_store(ds_spill + int64_t(slot) * Traits::kDsTileBytes, ss.ds.data(), Traits::kDsTileBytes);
        }
        __syncwarp();  // warp 0 converged again before the .aligned wgmma instructions below
      }

      if constexpr (kRunDkv) {
        wgmma_issue</*kZeroInit=*/false>(mma_dkv, tdVrPt, tdVrdOt(_, _, _, stage), acc_dv);
        wgmma_issue</*kZeroInit=*/false>(mma_dkv, tdKrdSt, tdKrQt(_, _, _, stage), acc_dk);
      }
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
      Tensor tdQrdS = make_tensor(rdS.data(), accumulator_as_a_operand(rdS.layout()));
      if constexpr (kDq) wgmma_issue</*kZeroInit=*/true>(mma_dq, tdQrdS, tdQrKt, acc_dq);
      // The stage is released exactly once per slot in every variant, after the last GEMM reading its Q and dO
      // (dV, dK) is done: wait<1> leaves only the dQ batch (sK, registers) in flight; without dQ that is wait<0>;
      // without dV/dK, S and dP (done above) were the last readers.
      if constexpr (kRunDkv && kDq) {
        warpgroup_wait<1>();  // dV and dK are done: the stage's Q and dO are free
      } else if constexpr (kRunDkv) {
        warpgroup_wait<0>();
      }
      pipeline.consumer_release(read);
      // Bulk dQ: this warp's dV/dK wgmmas are done reading sP/sdS; warpgroup 0 says so now (before its dQ wgmma
      // completes), so that warpgroup 1, which stages its dQ there, does not wait for more than that below.
      if constexpr (kDqBulk && kDqAccumulate) {
        if (warp < 4) cutlass::arch::NamedBarrier::arrive(kNumMmaThreads, kBarrierPdSRead);
      }
      if constexpr (kDq) warpgroup_wait<0>();
      if constexpr (kSignalKvFree) {  // S, dP (waited above) and dQ were the GEMMs reading sK, sV
        if (slot + 1 == count) cutlass::arch::ClusterBarrier::arrive(&ss.barrier_kv_free);
      }
      if constexpr (kRunDkv) {
        wgmma_done(acc_dv);
        wgmma_done(acc_dk);
      }
      if constexpr (kDq) {
        wgmma_done(acc_dq);
        warpgroup_fence_operand(tdQrdS);
      }

      // dQ_accum[row] += dS·K for the block's rows inside Lq; accumulator values 2j, 2j+1 are adjacent columns.
      // Skipping them touches no barrier: the atomics are fire-and-forget global reductions after the release.
      if constexpr (kDq && !kDqAccumulate) {  // the dQ GEMM stays: its accumulator needs a reader
        keep_alive(acc_dq, uint32_t(p.seqlen_q), reinterpret_cast<uint32_t*>(dq_accum));
      }
      if constexpr (kDqAccumulate && kDqBulk) {
        // Warpgroup 1 overwrites sP/sdS: wait until warpgroup 0's dV/dK wgmmas have read them too (its arrival
        // above; warpgroup 1's own 4 warps are past their wait<1> as well once all 256 threads are counted).
        // Warpgroup 0 only arrives (its staging is its own); the other barriers keep the two in step, so no
        // warpgroup arrives twice at this barrier before the other passed it.
        if (warp >= 4) cutlass::arch::NamedBarrier::sync(kNumMmaThreads, kBarrierPdSRead);
        // Rows past Lq add zeros (P = 0 there) into the padded rows of the workspace, which the convert skips.
        float* dq_block = dq_accum + int64_t(m_block) * kBlockM * kHeadDim;
        accumulate_dq_bulk(acc_dq, dq_warp_stage, dq_block + warp * kDqWarpFloats, lane);
      }
      if constexpr (kDqAccumulate && !kDqBulk) {
        const int rows_valid = p.seqlen_q - m_block * kBlockM;
        float* dq_block = dq_accum + int64_t(m_block) * kBlockM * kHeadDim;
        CUTE_UNROLL
        for (int i = 0; i < size(acc_dq); i += 2) {
          const int row = get<0>(tdQcdQ(i)), col = get<1>(tdQcdQ(i));
          if (row < rows_valid) {
            atomicAdd(reinterpret_cast<float2*>(dq_block + row * kHeadDim + col),
                      make_float2(acc_dq(i), acc_dq(i + 1)));
          }
        }
      }
      ++read;
    }
    if constexpr (kDqBulk && kDqAccumulate) {
      if (lane == 0) bulk_wait_all();  // the staging (smem) must outlive the last reduce-adds' reads
    }
  }
};

}  // namespace sparge::bwd
