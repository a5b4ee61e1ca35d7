// Tile shapes, shared-memory layouts, TMA and wgmma types of the Hopper forward kernel.
// One CTA = 3 warpgroups: warpgroup 0 produces (TMA loads of Q once and of each kept K/V block into a
// kStages-deep ring), warpgroups 1-2 consume (64 query rows each: S = Q·Kᵀ and O += P·V with wgmma).
#pragma once

#include <cute/tensor.hpp>

#include "common/kernel_traits_sm90.h"
#include "common/params.h"

namespace sparge::fwd {

using namespace cute;

// The K/V ring is 4 stages deep (6 at D=64): 64-row blocks are small, so keep several in flight (Q + 4 stages of K
// and V = 160 KB at D=128).
template <int kHeadDim, typename Element>
struct KernelTraitsSm90 : WarpSpecializedCtaSm90, TmaLoadsSm90<kHeadDim, Element, kHeadDim <= 64 ? 6 : 4> {
  using AtomLayoutMma = Layout<Shape<Int<kNumConsumerWarpgroups>, _1, _1>>;
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), AtomLayoutMma{}));
  // P (registers, K-major) times V read as (head dim, keys): V's rows are contiguous in head dim = MN-major B.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      AtomLayoutMma{}));

  using Loads = typename KernelTraitsSm90::TmaLoadsSm90;  // the base above: ring depth, tiles, TMA types
  static constexpr int kStages = Loads::kStages;  // unqualified in the layouts below
  using SmemLayoutAtom = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, typename Loads::TileQ{}));
  using SmemLayoutK =
      decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // The transposed view (head dim, keys, stage) of the same bytes, for the P·V wgmma.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  using TmaQ = typename Loads::template TmaLoadQ<SmemLayoutQ>;
  using TmaKV = typename Loads::template TmaLoadKV<decltype(take<0, 2>(SmemLayoutK{}))>;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>> v;
    alignas(16) typename Loads::Pipeline::SharedStorage pipeline_k;
    alignas(16) typename Loads::Pipeline::SharedStorage pipeline_v;
    alignas(16) uint64_t barrier_q;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
};

// What the Hopper kernel receives (a __grid_constant__ parameter: the TMA descriptors live in it).
template <class Traits>
struct KernelParamsSm90 {
  FwdParams args;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  typename Traits::ShapeQKV shape_q;
  typename Traits::ShapeQKV shape_k;
};

}  // namespace sparge::fwd
