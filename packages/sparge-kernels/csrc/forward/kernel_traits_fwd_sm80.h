// Tile shapes, shared-memory layouts and copy atoms of the portable (mma.sync, SM80+) forward kernel.
// One CTA of 4 warps owns 128 query rows; it streams key/value blocks of 64 rows through two smem stages.
#pragma once

#include <cute/tensor.hpp>

#include "common/kernel_traits.h"

namespace sparge::fwd {

using namespace cute;

template <int kHeadDim, typename Element>
struct KernelTraitsSm80 : MaskBlockTiles, KernelInstance<kHeadDim, Element> {
  using ElementAccum = float;
  static constexpr int kNWarps = 4;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kStages = 2;  // K/V double buffer

  // Each warp owns 16-row slabs of the 128 query rows; the N tile of 16 lets ldmatrix.x4 feed two MMAs.
  using MmaAtom = MmaAtomSm80<Element>;
  using TiledMma = TiledMMA<MmaAtom, Layout<Shape<Int<kNWarps>, _1, _1>>, Tile<Int<16 * kNWarps>, _16, _16>>;

  // 64-element (128-byte) rows, swizzled in 16-byte chunks so ldmatrix and cp.async are bank-conflict free.
  static constexpr int kSmemRow = 64;
  using SmemLayoutAtom = decltype(composition(
      Swizzle<3, 3, 3>{}, Layout<Shape<_8, Int<kSmemRow>>, Stride<Int<kSmemRow>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // V read as (head dim, keys) for the P·V product: same bytes, transposed view.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
  using SmemLayoutVtNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutVt{}));
  using SmemLayoutO = SmemLayoutQ;  // the output tile reuses Q's buffer

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<128>, Element>;

  // Global <-> shared: 16 bytes per thread, 8 threads per 128-byte row segment (coalesced).
  static constexpr int kGmemElemsPerLoad = sizeof(cute::uint128_t) / sizeof(Element);
  static constexpr int kGmemThreadsPerRow = kSmemRow / kGmemElemsPerLoad;
  using GmemLayoutAtom = Layout<Shape<Int<kNThreads / kGmemThreadsPerRow>, Int<kGmemThreadsPerRow>>,
                                Stride<Int<kGmemThreadsPerRow>, _1>>;
  using GmemTiledCopyQKV = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, Int<kGmemElemsPerLoad>>>{}));
  using GmemTiledCopyO = decltype(make_tiled_copy(
      Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, Int<kGmemElemsPerLoad>>>{}));

  static constexpr int kSmemQElems = int(size(SmemLayoutQ{}));
  static constexpr int kSmemKVElems = int(size(SmemLayoutKV{}));
  static constexpr int kSmemBytes = (kSmemQElems + 2 * kStages * kSmemKVElems) * int(sizeof(Element));
};

}  // namespace sparge::fwd
