// What the dK/dV and the dQ kernel both do per (query rows, key block) tile, written once: the shared -> register
// copies of their tiled MMA's operands, and dS = P ∘ (dP − delta) from the recomputed P and dP.
#pragma once

#include <cute/tensor.hpp>

#include <utility>

#include "common/utils.h"

namespace sparge::bwd {

using namespace cute;

// The shared -> register copies of a tiled MMA's operands, each with this thread's slice: ldmatrix for operands
// stored K-major (a, b), ldmatrix.trans for operands stored M/N-major (at, bt). A kernel uses the ones it needs.
template <class Traits, class TiledMma>
struct OperandCopies {
  using CopyA = decltype(make_tiled_copy_A(typename Traits::SmemCopyAtom{}, TiledMma{}));
  using CopyB = decltype(make_tiled_copy_B(typename Traits::SmemCopyAtom{}, TiledMma{}));
  using CopyAt = decltype(make_tiled_copy_A(typename Traits::SmemCopyAtomTransposed{}, TiledMma{}));
  using CopyBt = decltype(make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, TiledMma{}));
  template <class Copy>
  using ThrCopy = decltype(std::declval<Copy const&>().get_thread_slice(0));

  CopyA a;
  CopyB b;
  CopyAt at;
  CopyBt bt;
  ThrCopy<CopyA> thr_a;
  ThrCopy<CopyB> thr_b;
  ThrCopy<CopyAt> thr_at;
  ThrCopy<CopyBt> thr_bt;

  CUTE_DEVICE OperandCopies(TiledMma const& tiled_mma, int tid)
      : a(make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma)),
        b(make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma)),
        at(make_tiled_copy_A(typename Traits::SmemCopyAtomTransposed{}, tiled_mma)),
        bt(make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma)),
        thr_a(a.get_thread_slice(tid)),
        thr_b(b.get_thread_slice(tid)),
        thr_at(at.get_thread_slice(tid)),
        thr_bt(bt.get_thread_slice(tid)) {}
};

// The softmax backward of a tile: dS = P ∘ (dP − delta[row]) in place over dP's accumulator (coord's mode 0 gives
// the row in `delta`), returned converted to the element type for the next GEMM.
template <class Element, class AccDP, class AccP, class Coord>
CUTE_DEVICE auto dscores(AccDP& acc_dp, AccP const& acc_p, Coord const& coord, const float* delta) {
  CUTE_UNROLL
  for (int i = 0; i < size(acc_dp); ++i) acc_dp(i) = acc_p(i) * (acc_dp(i) - delta[get<0>(coord(i))]);
  Tensor rdS = make_tensor<Element>(acc_dp.layout());
  convert_fragment(acc_dp, rdS);
  return rdS;
}

}  // namespace sparge::bwd
