// Deterministic dQ kernel: one CTA per (query block of 128, head, batch), walking the block's kept key blocks
// (kv_index) with K and V double-buffered. Recomputes P and dS and accumulates dQ = dS K in registers; no atomics,
// so the result is bitwise reproducible. The dK/dV kernel runs without its dQ atomics in this mode. After the Hopper
// dS spill mode's kernels it makes only the query blocks they leave (the kernel's first check).
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>

#include "backward/kernel_traits_bwd_sm80.h"
#include "backward/recompute_bwd_sm80.h"
#include "backward/tile_bwd.h"
#include "common/utils.h"
#include "common/params.h"
#include "backward/tile_io_bwd_sm80.h"

namespace sparge::bwd {

using namespace cute;

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1) dq_kernel(const BwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kD = Traits::kHeadDim;
  constexpr int kM = Traits::kBlockM;
  constexpr int kN = Traits::kBlockN;

  extern __shared__ __align__(128) char smem_raw[];
  const int tid = threadIdx.x;
  const auto tile = query_block_tile<Traits>(p);
  const auto& walk = tile.walk;  // the query block's kept key blocks
  const int64_t bh = tile.bh;
  const int row0 = tile.row0, rows_valid = tile.rows_valid;
  const int count = walk.trip_count();

  // The Hopper dS spill mode: query blocks whose key blocks all spilled are the Hopper dQ kernel's
  // (kernel_bwd_dq_sm90.h); spill_pairs_kernel gave the others -1 throughout.
  if (p.ds_spill != nullptr && (count == 0 || p.kv_pair[(bh * p.num_q_blocks + tile.block) * p.num_k_blocks] >= 0)) {
    return;
  }
  Element* dq = tile.template at<Element>(p.dq, p.dq_stride, row0);
  if (count == 0) {  // the query block attends to nothing: out = 0, lse = -inf, no gradient
    store_zero_rows<Traits>(dq, p.dq_stride.row, rows_valid, tid);
    return;
  }

  const Element* q = tile.template at<const Element>(p.q, p.q_stride, row0);
  const Element* dout = tile.template at<const Element>(p.dout, p.dout_stride, row0);
  const Element* k = tile.template at<const Element>(p.k, p.k_stride);
  const Element* v = tile.template at<const Element>(p.v, p.v_stride);

  Element* smem_q = reinterpret_cast<Element*>(smem_raw);
  Element* smem_do = smem_q + Traits::kSmemQElems;
  Element* smem_k = smem_do + Traits::kSmemQElems;   // 2 buffers
  Element* smem_v = smem_k + 2 * Traits::kSmemKVElems;  // 2 buffers
  float* smem_lse = reinterpret_cast<float*>(smem_v + 2 * Traits::kSmemKVElems);
  float* smem_delta = smem_lse + kM;

  auto load_kv = [&](int it, int buf) {
    const int key0 = walk.start(it), keys = walk.valid(it);
    load_tile_async<Traits, kN>(k + key0 * p.k_stride.row, p.k_stride.row, keys,
                                smem_k + buf * Traits::kSmemKVElems, tid);
    load_tile_async<Traits, kN>(v + key0 * p.v_stride.row, p.v_stride.row, keys,
                                smem_v + buf * Traits::kSmemKVElems, tid);
  };

  load_tile_async<Traits, kM>(q, p.q_stride.row, rows_valid, smem_q, tid);
  load_tile_async<Traits, kM>(dout, p.dout_stride.row, rows_valid, smem_do, tid);
  if (tid < kM) {
    smem_lse[tid] = p.lse_log2[bh * p.padded_q + row0 + tid];
    smem_delta[tid] = p.delta[bh * p.padded_q + row0 + tid];
  }
  load_kv(0, 0);
  cp_async_fence();

  typename Traits::TiledMmaQ tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQ{});

  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
  Tensor tSrK = thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{}));
  Tensor tdPrdO = thr_mma.partition_fragment_A(sdO);
  Tensor tdPrV = thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKV{}));
  Tensor tdQrKt =
      thr_mma.partition_fragment_B(make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKVTNoSwizzle{}));

  const OperandCopies<Traits, decltype(tiled_mma)> cp(tiled_mma, tid);
  Tensor tSsQ = cp.thr_a.partition_S(sQ);
  Tensor tdPsdO = cp.thr_a.partition_S(sdO);
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kN>>{}));

  Tensor acc_dq = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kD>>{});
  clear(acc_dq);

  int buf = 0;
  for (int it = 0; it < count; ++it) {
    cp_async_wait<0>();
    __syncthreads();  // this block's K/V (and Q, dO, lse, delta) are in; the other buffer is free
    if (it + 1 < count) load_kv(it + 1, buf ^ 1);
    cp_async_fence();

    const int keys_valid = walk.valid(it);
    Tensor sK = make_tensor(make_smem_ptr(smem_k + buf * Traits::kSmemKVElems), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(smem_v + buf * Traits::kSmemKVElems), typename Traits::SmemLayoutKV{});
    Tensor sKt = make_tensor(make_smem_ptr(smem_k + buf * Traits::kSmemKVElems), typename Traits::SmemLayoutKVT{});

    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});
    clear(acc_s);
    gemm_ss(acc_s, tSrQ, tSrK, tSsQ, cp.thr_b.partition_S(sK), tiled_mma, cp.a, cp.b, cp.thr_a, cp.thr_b);
    probs_with_tail_mask<kN>(acc_s, tScS, keys_valid, p.scale_log2, smem_lse);

    Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kM>, Int<kN>>{});
    clear(acc_dp);
    gemm_ss(acc_dp, tdPrdO, tdPrV, tdPsdO, cp.thr_b.partition_S(sV), tiled_mma, cp.a, cp.b, cp.thr_a, cp.thr_b);
    // dQ += dS K with dS straight from registers: each warp owns whole rows of dS.
    Tensor rdS = dscores<Element>(acc_dp, acc_s, tScS, smem_delta);
    Tensor tdQrdS = make_tensor(rdS.data(), accumulator_as_a_operand(rdS.layout()));
    gemm_rs(acc_dq, tdQrdS, tdQrKt, cp.thr_bt.partition_S(sKt), tiled_mma, cp.bt, cp.thr_bt);
    buf ^= 1;
  }

  __syncthreads();  // the last GEMMs are done with sQ: stage dQ there
  store_accumulator<Traits, kM>(acc_dq, p.scale, tiled_mma, smem_q, dq, p.dq_stride.row, rows_valid, tid);
}

}  // namespace sparge::bwd
