// dK/dV kernel: one CTA per (key block of 64, head, batch). K and V stay in shared memory while the CTA walks the
// key block's kept query blocks (q_index), 64 rows per step, double-buffering Q, dO, lse and delta:
//   S = Q Kᵀ,  P = exp2(S·scale·log2e − lse·log2e),  dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − delta),
//   dK += dSᵀ Q (· scale at the end),  and unless kDqMode == kNone: dQ_accum += dS K (fp32, see dq_accumulate.h).
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "backward/dq_accumulate_bwd.h"
#include "backward/kernel_traits_bwd_sm80.h"
#include "backward/recompute_bwd_sm80.h"
#include "backward/tile_bwd.h"
#include "common/utils.h"
#include "common/params.h"
#include "backward/tile_io_bwd_sm80.h"

namespace sparge::bwd {

using namespace cute;

template <class Traits, DqMode kDqMode>
__global__ void __launch_bounds__(Traits::kNThreads, 1) dkdv_kernel(const BwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kD = Traits::kHeadDim;
  constexpr int kM = Traits::kStepRows;
  constexpr int kN = Traits::kBlockN;

  extern __shared__ __align__(128) char smem_raw[];
  const int tid = threadIdx.x;
  const auto tile = key_block_tile<Traits>(p);
  const auto& walk = tile.walk;  // the key block's kept query blocks
  const int64_t bh = tile.bh;
  const int64_t padded = p.padded_q;
  const int key0 = tile.row0, keys_valid = tile.rows_valid;
  const int count = walk.trip_count();

  Element* dk = tile.template at<Element>(p.dk, p.dk_stride, key0);
  Element* dv = tile.template at<Element>(p.dv, p.dv_stride, key0);
  if (count == 0) {  // no query attends to this key block
    store_zero_rows<Traits>(dk, p.dk_stride.row, keys_valid, tid);
    store_zero_rows<Traits>(dv, p.dv_stride.row, keys_valid, tid);
    return;
  }

  const Element* q = tile.template at<const Element>(p.q, p.q_stride);
  const Element* dout = tile.template at<const Element>(p.dout, p.dout_stride);
  const Element* k = tile.template at<const Element>(p.k, p.k_stride, key0);
  const Element* v = tile.template at<const Element>(p.v, p.v_stride, key0);
  const float* lse_log2 = p.lse_log2 + bh * padded;
  const float* delta = p.delta + bh * padded;

  Element* smem_k = reinterpret_cast<Element*>(smem_raw);
  Element* smem_v = smem_k + Traits::kSmemKVElems;
  Element* smem_q = smem_v + Traits::kSmemKVElems;       // 2 buffers
  Element* smem_do = smem_q + 2 * Traits::kSmemStepElems;  // 2 buffers
  Element* smem_p = smem_do + 2 * Traits::kSmemStepElems;
  Element* smem_ds = smem_p + Traits::kSmemPdSElems;
  float* smem_lse = reinterpret_cast<float*>(smem_ds + Traits::kSmemPdSElems);  // 2 buffers of kM
  float* smem_delta = smem_lse + 2 * kM;                                         // 2 buffers of kM
  float* smem_dq_stage = smem_delta + 2 * kM;  // kBulkReduce: kM x kD floats, one slice per warp

  // Steps: two per kept query block. The second half of the last query block may lie wholly past Lq.
  const int num_steps = 2 * count;
  auto step_row0 = [&](int step) { return walk.start(step >> 1) + (step & 1) * kM; };
  auto next_step = [&](int step) {
    int next = step + 1;
    if (next < num_steps && step_row0(next) >= p.seqlen_q) ++next;
    return next;
  };
  auto load_step = [&](int step, int buf) {
    const int row0 = step_row0(step);
    load_tile_async<Traits, kM>(q + row0 * p.q_stride.row, p.q_stride.row, p.seqlen_q - row0,
                                smem_q + buf * Traits::kSmemStepElems, tid);
    load_tile_async<Traits, kM>(dout + row0 * p.dout_stride.row, p.dout_stride.row, p.seqlen_q - row0,
                                smem_do + buf * Traits::kSmemStepElems, tid);
    if (tid < kM) {  // padded workspace: rows up to Nq * 128 exist
      smem_lse[buf * kM + tid] = lse_log2[row0 + tid];
      smem_delta[buf * kM + tid] = delta[row0 + tid];
    }
  };

  load_tile_async<Traits, kN>(k, p.k_stride.row, keys_valid, smem_k, tid);
  load_tile_async<Traits, kN>(v, p.v_stride.row, keys_valid, smem_v, tid);
  load_step(0, 0);
  cp_async_fence();

  typename Traits::TiledMmaKV tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);

  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKVT{});
  Tensor sP = make_tensor(make_smem_ptr(smem_p), typename Traits::SmemLayoutPdS{});
  Tensor sPt = make_tensor(make_smem_ptr(smem_p), typename Traits::SmemLayoutPdST{});
  Tensor sdS = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutPdS{});
  Tensor sdSt = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutPdST{});

  // Register fragments (shapes only come from these tensors).
  Tensor tSrQ = thr_mma.partition_fragment_A(make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutStep{}));
  Tensor tSrK = thr_mma.partition_fragment_B(sK);
  Tensor tdPrdO = thr_mma.partition_fragment_A(make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutStep{}));
  Tensor tdPrV = thr_mma.partition_fragment_B(sV);
  Tensor tdVrPt =
      thr_mma.partition_fragment_A(make_tensor(make_smem_ptr(smem_p), typename Traits::SmemLayoutPdSTNoSwizzle{}));
  Tensor tdVrdOt =
      thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutStepTNoSwizzle{}));
  Tensor tdKrdSt =
      thr_mma.partition_fragment_A(make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutPdSTNoSwizzle{}));
  Tensor tdKrQt =
      thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutStepTNoSwizzle{}));
  Tensor tdQrdS = thr_mma.partition_fragment_A(sdS);
  Tensor tdQrKt =
      thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKVTNoSwizzle{}));

  const OperandCopies<Traits, decltype(tiled_mma)> cp(tiled_mma, tid);
  auto copy_c = make_tiled_copy_C(typename Traits::SmemCopyAtomAcc{}, tiled_mma);
  auto thr_copy_c = copy_c.get_thread_slice(tid);

  Tensor tSsK = cp.thr_b.partition_S(sK);
  Tensor tdPsV = cp.thr_b.partition_S(sV);
  Tensor tdVsPt = cp.thr_at.partition_S(sPt);
  Tensor tdKsdSt = cp.thr_at.partition_S(sdSt);
  Tensor tdQsdS = cp.thr_a.partition_S(sdS);
  Tensor tdQsKt = cp.thr_bt.partition_S(sKt);
  Tensor tPsP = thr_copy_c.partition_D(sP);
  Tensor tdSsdS = thr_copy_c.partition_D(sdS);

  // (row, col) of every accumulator element of S/dP (query row, key) and of dQ (query row, dim).
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kN>>{}));
  Tensor tdQcdQ = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));

  Tensor acc_dk = partition_fragment_C(tiled_mma, Shape<Int<kN>, Int<kD>>{});
  Tensor acc_dv = partition_fragment_C(tiled_mma, Shape<Int<kN>, Int<kD>>{});
  clear(acc_dk);
  clear(acc_dv);

  int step = 0, buf = 0;
  while (true) {
    const int step_next = next_step(step);
    cp_async_wait<0>();
    __syncthreads();  // this step's tiles are in; everyone is done with the other buffer, sP and sdS
    if (step_next < num_steps) load_step(step_next, buf ^ 1);
    cp_async_fence();

    const int row0 = step_row0(step);
    Element* sq = smem_q + buf * Traits::kSmemStepElems;
    Element* sdo = smem_do + buf * Traits::kSmemStepElems;
    Tensor sQ = make_tensor(make_smem_ptr(sq), typename Traits::SmemLayoutStep{});
    Tensor sdO = make_tensor(make_smem_ptr(sdo), typename Traits::SmemLayoutStep{});
    Tensor sQt = make_tensor(make_smem_ptr(sq), typename Traits::SmemLayoutStepT{});
    Tensor sdOt = make_tensor(make_smem_ptr(sdo), typename Traits::SmemLayoutStepT{});
    const float* step_lse = smem_lse + buf * kM;
    const float* step_delta = smem_delta + buf * kM;

    // S = Q Kᵀ, then P in place; keys past Lk get P = 0 (their K rows were zero-filled, S would be 0).
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});
    clear(acc_s);
    gemm_ss(acc_s, tSrQ, tSrK, cp.thr_a.partition_S(sQ), tSsK, tiled_mma, cp.a, cp.b, cp.thr_a, cp.thr_b);
    probs_with_tail_mask<kN>(acc_s, tScS, keys_valid, p.scale_log2, step_lse);
    Tensor rP = make_tensor<Element>(acc_s.layout());
    convert_fragment(acc_s, rP);
    cute::copy(copy_c, thr_copy_c.retile_S(rP), tPsP);

    // dP = dO Vᵀ, dS = P ∘ (dP − delta).
    Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});
    clear(acc_dp);
    gemm_ss(acc_dp, tdPrdO, tdPrV, cp.thr_a.partition_S(sdO), tdPsV, tiled_mma, cp.a, cp.b, cp.thr_a, cp.thr_b);
    Tensor rdS = dscores<Element>(acc_dp, acc_s, tScS, step_delta);
    cute::copy(copy_c, thr_copy_c.retile_S(rdS), tdSsdS);
    __syncthreads();  // sP, sdS complete

    gemm_ss(acc_dv, tdVrPt, tdVrdOt, tdVsPt, cp.thr_bt.partition_S(sdOt), tiled_mma, cp.at, cp.bt, cp.thr_at,
            cp.thr_bt);
    gemm_ss(acc_dk, tdKrdSt, tdKrQt, tdKsdSt, cp.thr_bt.partition_S(sQt), tiled_mma, cp.at, cp.bt, cp.thr_at,
            cp.thr_bt);

    if constexpr (kDqMode != DqMode::kNone) {
      Tensor acc_dq = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kD>>{});
      clear(acc_dq);
      gemm_ss(acc_dq, tdQrdS, tdQrKt, tdQsdS, tdQsKt, tiled_mma, cp.a, cp.bt, cp.thr_a, cp.thr_bt);
      float* dq_chunk = p.dq_accum + (bh * padded + row0) * kD;  // this step's 64 rows
      if constexpr (kDqMode == DqMode::kAtomic) {
        accumulate_dq_atomic<kD>(acc_dq, tdQcdQ, dq_chunk);
      } else {
        constexpr int kWarpSlice = 32 * decltype(size(acc_dq))::value;
        const int warp = tid / 32;
        accumulate_dq_bulk(acc_dq, smem_dq_stage + warp * kWarpSlice, dq_chunk + warp * kWarpSlice, tid % 32);
      }
    }

    step = step_next;
    buf ^= 1;
    if (step >= num_steps) break;
  }

  if constexpr (kDqMode == DqMode::kBulkReduce) {
    if (tid % 32 == 0) bulk_wait_all();  // the stage must stay alive until the reduces have read it
  }
  __syncthreads();  // the last step's GEMMs are done with sQ/sdO: reuse them to stage dK and dV
  store_accumulator<Traits, kN>(acc_dk, p.scale, tiled_mma, smem_q, dk, p.dk_stride.row, keys_valid, tid);
  store_accumulator<Traits, kN>(acc_dv, 1.f, tiled_mma, smem_do, dv, p.dv_stride.row, keys_valid, tid);
}

}  // namespace sparge::bwd
