// Epilogue of the Hopper forward: each consumer thread stores its normalised output pairs (4-byte stores of
// two adjacent columns) straight from registers for rows < Lq, and the quad's first thread writes lse. The parts
// of a split tile first meet in combine_parts.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include <cmath>

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
  static constexpr int kNumMmaThreads = Traits::kNumMmaThreads;
  static constexpr uint32_t kBarrierSplitArrival = 0;  // the forward's only named barrier

  // A part of a split tile (TileCoord::parts > 1; common/tile_scheduler.h TailSplit). It stores its partial result
  // (acc_o normalised by its own row sums, and its lse) into its slot of p.split_partials, the output in
  // thread-fragment order, and counts itself in at p.tile_counter[1 + split_tile]. The part that arrives last
  // reads every part's slot back and replaces acc_o and lse by their combination, summed in part order so that the
  // result does not depend on which part came last, and returns true: the caller then stores the tile as a whole
  // one. The others return false. An empty part has lse -inf and weighs nothing; a row empty in every part keeps
  // lse -inf and output 0, as finalize gives a whole tile.
  template <class AccO, class RowLse>
  __device__ static bool combine_parts(FwdParams const& p, TileCoord const& tile, AccO& acc_o, RowLse& lse,
                                       int thread_idx, int& split_last) {
    constexpr int kFloats = decltype(size(acc_o))::value;
    static_assert(kFloats % 4 == 0, "the partial output is stored as float4");
    typename Traits::TiledMmaPV mma_pv;
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);
    Tensor tOc = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor tOc_rowcol = make_tensor(tOc.data(), accumulator_as_rowcol(tOc.layout()));
    constexpr int kRows = decltype(size<0>(tOc_rowcol))::value;
    auto slot = [&](int part) {
      return p.split_partials + (int64_t(tile.split_tile) * tile.parts + part) * (kBlockM * (1 + kHeadDim));
    };
    auto output = [&](int part) { return reinterpret_cast<float4*>(slot(part) + kBlockM); };

    float* mine = slot(tile.part);
    CUTE_UNROLL
    for (int j = 0; j < kFloats / 4; ++j) {
      output(tile.part)[j * kNumMmaThreads + thread_idx] =
          make_float4(acc_o(4 * j), acc_o(4 * j + 1), acc_o(4 * j + 2), acc_o(4 * j + 3));
    }
    if (get<1>(tOc_rowcol(0, 0)) == 0) {
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) mine[get<0>(tOc_rowcol(mi, 0))] = lse(mi);
    }
    // Every thread's stores are visible device-wide before the arrival is counted (split-K's fence pattern).
    __threadfence();
    cutlass::arch::NamedBarrier::sync(kNumMmaThreads, kBarrierSplitArrival);
    if (thread_idx == 0) split_last = atomicAdd(p.tile_counter + 1 + tile.split_tile, 1) == tile.parts - 1;
    cutlass::arch::NamedBarrier::sync(kNumMmaThreads, kBarrierSplitArrival);
    if (!split_last) return false;
    __threadfence();

    // Weights exp(lse_part - lse_max) / sum; the slots are read through L2 (__ldcg: other SMs wrote them).
    float lse_max[kRows], weight_sum[kRows];
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) lse_max[mi] = -INFINITY;
    for (int part = 0; part < tile.parts; ++part) {
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) {
        lse_max[mi] = fmaxf(lse_max[mi], __ldcg(slot(part) + get<0>(tOc_rowcol(mi, 0))));
      }
    }
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) weight_sum[mi] = 0.f;
    for (int part = 0; part < tile.parts; ++part) {
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) {
        const float l = __ldcg(slot(part) + get<0>(tOc_rowcol(mi, 0)));
        weight_sum[mi] += lse_max[mi] == -INFINITY ? 0.f : expf(l - lse_max[mi]);
      }
    }
    Tensor part_o = make_fragment_like(acc_o);
    Tensor part_rowcol = make_tensor(part_o.data(), accumulator_as_rowcol(part_o.layout()));
    Tensor acc_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));
    clear(acc_o);
    for (int part = 0; part < tile.parts; ++part) {
      CUTE_UNROLL
      for (int j = 0; j < kFloats / 4; ++j) {
        const float4 v = __ldcg(output(part) + j * kNumMmaThreads + thread_idx);
        part_o(4 * j) = v.x;
        part_o(4 * j + 1) = v.y;
        part_o(4 * j + 2) = v.z;
        part_o(4 * j + 3) = v.w;
      }
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) {
        const float l = __ldcg(slot(part) + get<0>(tOc_rowcol(mi, 0)));
        const float w = lse_max[mi] == -INFINITY ? 0.f : expf(l - lse_max[mi]) / weight_sum[mi];
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(acc_rowcol); ++ni) acc_rowcol(mi, ni) += w * part_rowcol(mi, ni);
      }
    }
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      lse(mi) = lse_max[mi] == -INFINITY ? -INFINITY : lse_max[mi] + logf(weight_sum[mi]);
    }
    return true;
  }

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
