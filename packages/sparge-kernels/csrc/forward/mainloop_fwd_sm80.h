// Mainloop of the portable forward: for one (query block, head, batch) tile, walk ONLY the kept key blocks
// kv_index[b, h, i, :kv_count], double-buffering K/V with cp.async while the tensor cores (mma.sync) run
// S = Q·Kᵀ, the online softmax and O += P·V on the previous block.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/block_sparse.h"
#include "common/params.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"
#include "forward/softmax.h"

namespace sparge::fwd {

using namespace cute;

template <class Traits>
struct MainloopFwdSm80 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TileQ = Shape<Int<kBlockM>, Int<kHeadDim>>;
  using TileKV = Shape<Int<kBlockN>, Int<kHeadDim>>;

  // Accumulates the unnormalised output of the tile into acc_o and the softmax statistics into softmax.
  template <class AccO, class Softmax>
  __device__ static void run(FwdParams const& p, TileCoord const& tile, char* smem, AccO& acc_o,
                             Softmax& softmax) {
    const int tid = threadIdx.x;
    const int64_t bh = int64_t(tile.batch) * p.heads + tile.head;
    const BlockSparseWalk<kBlockN> walk(p.kv_count, p.kv_index, bh, p.num_q_blocks, tile.block, p.num_k_blocks,
                                        p.seqlen_k);
    const int kv_count = walk.trip_count();
    const int q_rows = min(kBlockM, p.seqlen_q - tile.block * kBlockM);

    const Element* q_ptr = static_cast<const Element*>(p.q) + tile.batch * p.q_stride.batch +
                           tile.head * p.q_stride.head + int64_t(tile.block) * kBlockM * p.q_stride.row;
    const Element* k_base = static_cast<const Element*>(p.k) + tile.batch * p.k_stride.batch + tile.head * p.k_stride.head;
    const Element* v_base = static_cast<const Element*>(p.v) + tile.batch * p.v_stride.batch + tile.head * p.v_stride.head;
    Tensor gQ = make_tensor(make_gmem_ptr(q_ptr), TileQ{}, make_stride(p.q_stride.row, _1{}));
    auto gK = [&](int n) {
      return make_tensor(make_gmem_ptr(k_base + int64_t(n) * kBlockN * p.k_stride.row), TileKV{},
                         make_stride(p.k_stride.row, _1{}));
    };
    auto gV = [&](int n) {
      return make_tensor(make_gmem_ptr(v_base + int64_t(n) * kBlockN * p.v_stride.row), TileKV{},
                         make_stride(p.v_stride.row, _1{}));
    };

    Element* smem_q = reinterpret_cast<Element*>(smem);
    Element* smem_k = smem_q + Traits::kSmemQElems;
    Element* smem_v = smem_k + Traits::kStages * Traits::kSmemKVElems;
    Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});
    auto sK = [&](int stage) {
      return make_tensor(make_smem_ptr(smem_k + stage * Traits::kSmemKVElems), typename Traits::SmemLayoutKV{});
    };
    auto sV = [&](int stage) {
      return make_tensor(make_smem_ptr(smem_v + stage * Traits::kSmemKVElems), typename Traits::SmemLayoutKV{});
    };
    auto sVt = [&](int stage) {
      return make_tensor(make_smem_ptr(smem_v + stage * Traits::kSmemKVElems), typename Traits::SmemLayoutVt{});
    };

    // ---- global -> shared
    typename Traits::GmemTiledCopyQKV gmem_copy;
    auto gmem_thr = gmem_copy.get_thread_slice(tid);
    Tensor tQc = gmem_thr.partition_S(make_identity_tensor(TileQ{}));
    Tensor tKVc = gmem_thr.partition_S(make_identity_tensor(TileKV{}));
    auto load_kv = [&](int slot, int stage) {
      const int n = walk.block(slot);
      const int rows = min(kBlockN, p.seqlen_k - n * kBlockN);
      Tensor tKs = gmem_thr.partition_D(sK(stage));
      Tensor tVs = gmem_thr.partition_D(sV(stage));
      copy_rows_zfill</*kPerSlice=*/true>(gmem_copy, gmem_thr.partition_S(gK(n)), tKs, tKVc, rows);
      copy_rows_zfill</*kPerSlice=*/true>(gmem_copy, gmem_thr.partition_S(gV(n)), tVs, tKVc, rows);
    };
    Tensor tQs = gmem_thr.partition_D(sQ);
    copy_rows_zfill</*kPerSlice=*/true>(gmem_copy, gmem_thr.partition_S(gQ), tQs, tQc, q_rows);
    if (kv_count > 0) load_kv(0, 0);
    cp_async_fence();

    // ---- shared -> registers and the MMAs
    typename Traits::TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK(0));
    Tensor tOrVt = thr_mma.partition_fragment_B(
        make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutVtNoSwizzle{}));
    auto smem_copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_q = smem_copy_q.get_thread_slice(tid);
    Tensor tSsQ = smem_thr_q.partition_S(sQ);
    auto smem_copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
    auto smem_thr_k = smem_copy_k.get_thread_slice(tid);
    auto smem_copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
    auto smem_thr_v = smem_copy_v.get_thread_slice(tid);

    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
    Tensor acc_o_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));

    for (int slot = 0; slot < kv_count; ++slot) {
      const int stage = slot & 1;
      // Block `slot` has landed, and every thread is done with the other stage (read in the last iteration).
      cp_async_wait<0>();
      __syncthreads();
      if (slot + 1 < kv_count) {
        load_kv(slot + 1, stage ^ 1);
        cp_async_fence();
      }

      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
      clear(acc_s);
      Tensor tSsK = smem_thr_k.partition_S(sK(stage));
      gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_copy_q, smem_copy_k, smem_thr_q, smem_thr_k);

      // The last key block may run past Lk: those keys get -inf (their zero-filled K/V rows add nothing).
      Tensor probs = softmax_block<Element, kBlockN>(softmax, acc_s, tScS, walk.valid(slot), acc_o_rowcol);
      Tensor tOrP = make_tensor(probs.data(), accumulator_as_a_operand(probs.layout()));
      Tensor tOsVt = smem_thr_v.partition_S(sVt(stage));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_copy_v, smem_thr_v);
    }
  }
};

}  // namespace sparge::fwd
