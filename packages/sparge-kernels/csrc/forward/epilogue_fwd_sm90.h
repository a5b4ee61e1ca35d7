// Epilogue of the Hopper forward: each consumer thread stores its normalised output pairs (4-byte stores of
// two adjacent columns) straight from registers for rows < Lq, and the quad's first thread writes lse.
#pragma once

#include <cute/tensor.hpp>

#include "common/params.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"

namespace sparge::fwd {

using namespace cute;

template <class Traits>
struct EpilogueFwdSm90 {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;

  template <class AccO, class RowLse>
  __device__ static void store(FwdParams const& p, TileCoord const& tile, AccO const& acc_o,
                               RowLse const& lse, int thread_idx) {
    typename Traits::TiledMmaPV mma_pv;
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);
    Tensor tOc = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tOc_rowcol = make_tensor(tOc.data(), accumulator_as_rowcol(tOc.layout()));
    Tensor o_reg = convert_fragment<Element>(acc_o);
    Tensor o_rowcol = make_tensor(o_reg.data(), accumulator_as_rowcol(o_reg.layout()));
    const int q_rows = min(kBlockM, p.seqlen_q - tile.block * kBlockM);

    Element* o_ptr = static_cast<Element*>(p.out) + tile.batch * p.out_stride.batch + tile.head * p.out_stride.head +
                     int64_t(tile.block) * kBlockM * p.out_stride.row;
    CUTE_UNROLL
    for (int mi = 0; mi < size<0>(o_rowcol); ++mi) {
      const int row = get<0>(tOc_rowcol(mi, 0));
      if (row < q_rows) {
        Element* row_ptr = o_ptr + int64_t(row) * p.out_stride.row;
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(o_rowcol); ni += 2) {
          // Columns ni and ni + 1 of the rowcol view are adjacent in memory (the accumulator's column pairs).
          const int col = get<1>(tOc_rowcol(mi, ni));
          cutlass::Array<Element, 2> pair;
          pair[0] = o_rowcol(mi, ni);
          pair[1] = o_rowcol(mi, ni + 1);
          *reinterpret_cast<cutlass::Array<Element, 2>*>(row_ptr + col) = pair;
        }
      }
    }
    if (get<1>(tOc_rowcol(0, 0)) == 0) {
      const int64_t bh = int64_t(tile.batch) * p.heads + tile.head;
      float* lse_ptr = p.lse + bh * p.seqlen_q + int64_t(tile.block) * kBlockM;
      CUTE_UNROLL
      for (int mi = 0; mi < size<0>(tOc_rowcol); ++mi) {
        const int row = get<0>(tOc_rowcol(mi, 0));
        if (row < q_rows) lse_ptr[row] = lse(mi);
      }
    }
  }
};

}  // namespace sparge::fwd
