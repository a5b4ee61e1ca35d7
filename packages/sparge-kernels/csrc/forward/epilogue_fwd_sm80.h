// Epilogue of the forward: normalised O (registers) -> shared (reusing Q's buffer) -> 16-byte coalesced
// global stores of the rows < Lq; lse (float32) written by the thread holding each row's first column.
#pragma once

#include <cute/tensor.hpp>

#include "common/params.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"

namespace sparge::fwd {

using namespace cute;

template <class Traits>
struct EpilogueFwd {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TileO = Shape<Int<kBlockM>, Int<kHeadDim>>;

  template <class AccO, class RowLse>
  __device__ static void store(FwdParams const& p, TileCoord const& tile, char* smem, AccO const& acc_o,
                               RowLse const& lse) {
    const int tid = threadIdx.x;
    const int q_rows = min(kBlockM, p.seqlen_q - tile.block * kBlockM);
    typename Traits::TiledMma tiled_mma;

    // No cp.async may still target Q's buffer, and every warp must be done reading Q from it.
    cp_async_wait<0>();
    __syncthreads();

    Tensor sO = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename Traits::SmemLayoutO{});
    Tensor o_reg = convert_fragment<Element>(acc_o);
    auto smem_copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
    auto smem_thr_o = smem_copy_o.get_thread_slice(tid);
    Tensor o_reg_view = smem_thr_o.retile_S(o_reg);
    Tensor tOsO_mma = smem_thr_o.partition_D(sO);
    copy(smem_copy_o, o_reg_view, tOsO_mma);

    // lse: the quad's lane 0 holds column 0 of its rows.
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor tOc = thr_mma.partition_C(make_identity_tensor(TileO{}));
    Tensor tOc_rowcol = make_tensor(tOc.data(), accumulator_as_rowcol(tOc.layout()));
    const int64_t bh = int64_t(tile.batch) * p.heads + tile.head;
    float* lse_ptr = p.lse + bh * p.seqlen_q + int64_t(tile.block) * kBlockM;
    if (get<1>(tOc_rowcol(0, 0)) == 0) {
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(tOc_rowcol); ++mi) {
        const int row = get<0>(tOc_rowcol(mi, 0));
        if (row < q_rows) lse_ptr[row] = lse(mi);
      }
    }
    __syncthreads();

    Element* o_ptr = static_cast<Element*>(p.out) + tile.batch * p.out_stride.batch + tile.head * p.out_stride.head +
                     int64_t(tile.block) * kBlockM * p.out_stride.row;
    Tensor gO = make_tensor(make_gmem_ptr(o_ptr), TileO{}, make_stride(p.out_stride.row, _1{}));
    typename Traits::GmemTiledCopyO gmem_copy_o;
    auto gmem_thr_o = gmem_copy_o.get_thread_slice(tid);
    Tensor tOsO = gmem_thr_o.partition_S(sO);
    Tensor tOgO = gmem_thr_o.partition_D(gO);
    Tensor tOcO = gmem_thr_o.partition_D(make_identity_tensor(TileO{}));
    Tensor tOrO = make_tensor<Element>(shape(tOgO));
    copy(gmem_copy_o, tOsO, tOrO);
    CUTE_UNROLL
    for (int m = 0; m < size<1>(tOgO); ++m) {
      if (get<0>(tOcO(0, m, 0)) < q_rows) {
        CUTE_UNROLL
        for (int k = 0; k < size<2>(tOgO); ++k) copy(gmem_copy_o, tOrO(_, m, k), tOgO(_, m, k));
      }
    }
  }
};

}  // namespace sparge::fwd
