// Tile shapes, shared-memory layouts, TMA and wgmma types of the Hopper forward kernel.
// One CTA = 3 warpgroups: warpgroup 0 produces (TMA loads of Q once and of each kept K/V block into a
// kStages-deep ring), warpgroups 1-2 consume (64 query rows each: S = Q·Kᵀ and O += P·V with wgmma).
#pragma once

#include <cute/tensor.hpp>

#include "common/kernel_traits_sm90.h"
#include "common/params.h"
#include "common/tile_mailbox_sm90.h"

namespace sparge::fwd {

using namespace cute;

// Each ring stage holds two kept 64-key blocks (rows [0, 64) and [64, 128) of a 128-key stage), so the consumers
// run 128-key GEMMs (FA3's 128 x 128 tile at D=128) and half as many iterations as there are kept blocks. The ring
// is 2 stages deep at D=128 (Q + 2 stages of K and V = 160 KB) and 4 at D=64 (144 KB).
template <int kHeadDim, typename Element>
struct KernelTraitsSm90 : WarpSpecializedCtaSm90, TmaLoadsSm90<kHeadDim, Element, kHeadDim <= 64 ? 4 : 2> {
  static constexpr int kBlocksPerStage = 2;
  static constexpr int kStageKeys = kBlocksPerStage * kBlockN;
  using AtomLayoutMma = Layout<Shape<Int<kNumConsumerWarpgroups>, _1, _1>>;
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kStageKeys>, Int<kHeadDim>>>(),
      AtomLayoutMma{}));
  // P (registers, K-major) times V read as (head dim, keys): V's rows are contiguous in head dim = MN-major B.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kStageKeys>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      AtomLayoutMma{}));

  using Loads = typename KernelTraitsSm90::TmaLoadsSm90;  // the base above: ring depth, tiles, TMA types
  static constexpr int kStages = Loads::kStages;  // unqualified in the layouts below
  // Both kept blocks of a stage arrive on the stage's barrier: its transaction bytes are two blocks' (an odd
  // count's last stage loads its one block twice).
  static constexpr uint32_t kTmaBytesKVStage = kBlocksPerStage * Loads::kTmaBytesKV;
  using SmemLayoutAtom = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, typename Loads::TileQ{}));
  // (keys, head dim, stage): what the wgmma reads, 8-row groups evenly strided over all 128 keys.
  using SmemLayoutK =
      decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kStageKeys>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // The same bytes as (64 keys, head dim, (half, stage)): the TMA destination of one kept block. A half is not
  // contiguous at D=128 (each 64-column swizzle panel spans the stage's 128 rows), so the TMA built on it issues
  // one copy per panel.
  using SmemLayoutKVHalves = decltype(composition(
      SmemLayoutK{},
      Layout<Shape<Int<kBlockN>, Int<kHeadDim>, Shape<Int<kBlocksPerStage>, Int<kStages>>>,
             Stride<_1, Int<kStageKeys>, Stride<Int<kBlockN>, Int<kStageKeys * kHeadDim>>>>{}));
  using SmemLayoutKVHalf = decltype(take<0, 2>(SmemLayoutKVHalves{}));
  // The transposed view (head dim, keys, stage) of the same bytes, for the P·V wgmma.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kStageKeys>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  using TmaQ = typename Loads::template TmaLoadQ<SmemLayoutQ>;
  using TmaKV = typename Loads::template TmaLoadKV<SmemLayoutKVHalf>;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>> v;
    alignas(16) typename Loads::Pipeline::SharedStorage pipeline_k;
    alignas(16) typename Loads::Pipeline::SharedStorage pipeline_v;
    alignas(16) uint64_t barrier_q;
    // The persistent kernel's hand-offs between tiles (kernel_fwd_sm90.h).
    uint64_t barrier_q_free;  // the consumers have issued and finished their last Q·Kᵀ of a tile: Q may be reloaded
    TileMailbox mailbox;
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
