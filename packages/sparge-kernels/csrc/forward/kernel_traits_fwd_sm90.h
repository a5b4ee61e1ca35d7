// Tile shapes, shared-memory layouts, TMA and wgmma types of the Hopper forward kernel.
// One CTA = 3 warpgroups: warpgroup 0 produces (TMA loads of Q once and of each kept K/V block into a
// kStages-deep ring), warpgroups 1-2 consume (64 query rows each: S = Q·Kᵀ and O += P·V with wgmma).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/kernel_traits.h"
#include "common/params.h"

namespace sparge::fwd {

using namespace cute;

template <int kHeadDim, typename Element>
struct KernelTraitsSm90 : MaskBlockTiles, WarpSpecializedCtaSm90, KernelInstance<kHeadDim, Element> {
  // K/V ring depth: 64-row blocks are small, so keep several in flight (Q + 4 stages of K and V = 160 KB at D=128).
  static constexpr int kStages = kHeadDim <= 64 ? 6 : 4;

  using TileQ = Shape<Int<kBlockM>, Int<kHeadDim>>;
  using TileKV = Shape<Int<kBlockN>, Int<kHeadDim>>;
  using AtomLayoutMma = Layout<Shape<Int<kNumConsumerWarpgroups>, _1, _1>>;
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), AtomLayoutMma{}));
  // P (registers, K-major) times V read as (head dim, keys): V's rows are contiguous in head dim = MN-major B.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      AtomLayoutMma{}));

  using SmemLayoutAtom = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, TileQ{}));
  using SmemLayoutK = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // The transposed view (head dim, keys, stage) of the same bytes, for the P·V wgmma.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  // Global tensors as TMA sees them: (L, D, H, B) with element strides (row, 1, head, batch).
  using ShapeQKV = Shape<int32_t, Int<kHeadDim>, int32_t, int32_t>;
  using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                          make_layout(ShapeQKV{}, StrideQKV{})));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutQ{}, TileQ{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutK{}), TileKV{}, _1{}));
  static constexpr uint32_t kTmaBytesQ = uint32_t(size(SmemLayoutQ{}) * sizeof(Element));
  static constexpr uint32_t kTmaBytesKV = uint32_t(size(take<0, 2>(SmemLayoutK{})) * sizeof(Element));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>> v;
    alignas(16) typename Pipeline::SharedStorage pipeline_k;
    alignas(16) typename Pipeline::SharedStorage pipeline_v;
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
