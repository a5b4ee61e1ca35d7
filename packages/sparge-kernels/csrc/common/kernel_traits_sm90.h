// What the Hopper traits (forward and backward) share beyond common/kernel_traits.h: the warp-specialised CTA, and
// what its producer loads, i.e. the (L, D, H, B) operands as TMA sees them, the Q-side (kBlockM, D) and K/V-side
// (kBlockN, D) tiles it loads, and the TMA-fed ring those tiles stream through. Each direction's traits extend
// both and add their own shared-memory layouts, wgmma tilings and SharedStorage; only the ring's depth differs.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cstdint>

#include "common/kernel_traits.h"

namespace sparge {

using namespace cute;

// The CTA of the warp-specialised Hopper kernels (common/warp_specialized_sm90.h), forward and backward: one mask
// block's tiles, one producer warpgroup and a consumer warpgroup per 64 query rows of the block.
struct WarpSpecializedCtaSm90 : MaskBlockTiles {
  static constexpr int kNumConsumerWarpgroups = kBlockM / 64;
  static constexpr int kNumMmaThreads = kNumConsumerWarpgroups * 128;
  static constexpr int kNThreads = kNumMmaThreads + 128;  // + the producer warpgroup
};

// The producer's side of a Hopper kernel instantiated for (kHeadDim, Element), with a kStages-deep ring. A dependent
// base of the traits (unlike WarpSpecializedCtaSm90, so its constants stay unqualified there); the traits reach its
// members through an alias of it.
template <int kHeadDim, class Element, int kStages_>
struct TmaLoadsSm90 : KernelInstance<kHeadDim, Element> {
  static constexpr int kStages = kStages_;
  using Pipeline = cutlass::PipelineTmaAsync<kStages>;

  using TileQ = Shape<Int<MaskBlockTiles::kBlockM>, Int<kHeadDim>>;
  using TileKV = Shape<Int<MaskBlockTiles::kBlockN>, Int<kHeadDim>>;
  static constexpr uint32_t kTmaBytesQ = uint32_t(MaskBlockTiles::kBlockM * kHeadDim * sizeof(Element));
  static constexpr uint32_t kTmaBytesKV = uint32_t(MaskBlockTiles::kBlockN * kHeadDim * sizeof(Element));

  // Global tensors as TMA sees them: (L, D, H, B) with element strides (row, 1, head, batch).
  using ShapeQKV = Shape<int32_t, Int<kHeadDim>, int32_t, int32_t>;
  using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                          make_layout(ShapeQKV{}, StrideQKV{})));
  // The TMA load of a Q-side / K/V-side tile into one stage laid out as SmemLayout.
  template <class SmemLayout>
  using TmaLoadQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayout{}, TileQ{}, _1{}));
  template <class SmemLayout>
  using TmaLoadKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayout{}, TileKV{}, _1{}));
};

}  // namespace sparge
