// Tiles, shared-memory layouts and the wgmma of the Hopper dQ kernel of the dS spill mode (kernel_bwd_dq_sm90.h):
// one CTA of 3 warpgroups per query block (128 rows) sums dQ = dS·K over the key blocks it kept whose dS tiles the
// dK/dV kernel spilled. The producer loads per such key block its K tile (TMA) and its dS tile (one bulk copy of
// the dK/dV kernel's sdS bytes) into a ring; the two consumer warpgroups own 64 rows each.
// The K and dS layouts are the dK/dV kernel's (a stage holds the bytes it had), and the dQ accumulator partition
// is its TiledMmadQ's (same shape and warpgroup layout; A from smem here), so thread t holds the same dQ elements
// as consumer thread t there: what the bulk dQ path of the key blocks that did not spill left in dq_accum.
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "backward/kernel_traits_bwd_sm90.h"
#include "common/kernel_traits_sm90.h"
#include "common/tile_mailbox_sm90.h"

namespace sparge::bwd {

using namespace cute;

// A stage is a K tile (64 x D) and a dS tile (128 x 64): 32 KB at D=128, 24 KB at D=64. The CTA has the
// forward's register split (one per SM: the m64nDk16 wgmma and its 64 accumulators need about 90 registers, more
// than two CTAs of 384 threads get), so the ring is deep (5 and 6 stages) and the CTA persistent where the caller
// gives a tile counter: the producer streams the next query block's stages while the consumers store this one's.
template <int kHeadDim, typename Element>
struct KernelTraitsBwdDqSm90 : WarpSpecializedCtaSm90, TmaLoadsSm90<kHeadDim, Element, kHeadDim <= 64 ? 6 : 5> {
  using Loads = typename KernelTraitsBwdDqSm90::TmaLoadsSm90;
  using DkDv = KernelTraitsBwdSm90<kHeadDim, Element, /*kDqBulk=*/true, /*kDsSpill=*/true>;
  static constexpr int kStages = Loads::kStages;

  using SmemLayoutK =
      decltype(tile_to_shape(typename DkDv::SmemLayoutAtomQKV{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // (D, keys, stage): K as the MN-major B operand of dQ = dS·K, as the dK/dV kernel's SmemLayoutKt.
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  using SmemLayoutdS = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                              Shape<Int<kBlockM>, Int<kBlockN>, Int<kStages>>{}));
  static constexpr uint32_t kDsTileBytes = DkDv::kDsTileBytes;
  static_assert(cute::cosize_v<decltype(take<0, 2>(SmemLayoutdS{}))> * sizeof(Element) == kDsTileBytes);

  // dQ = dS·K: 128 x D x 64 keys, one 64-row slab per warpgroup, dS K-major from smem, K read as (D, keys).
  using TiledMmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      Layout<Shape<Int<kNumConsumerWarpgroups>, _1, _1>>{}));

  using TmaK = typename Loads::template TmaLoadKV<decltype(take<0, 2>(SmemLayoutK{}))>;
  static constexpr uint32_t kStageBytes = Loads::kTmaBytesKV + kDsTileBytes;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutdS>> ds;  // 1024 B aligned: the swizzle
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>> k;
    alignas(16) typename Loads::Pipeline::SharedStorage pipeline;
    TileMailbox mailbox;  // the persistent schedule's hand-off
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one sm_90 CTA (232,448 B opt-in limit)");
};

template <class Traits>
struct KernelParamsBwdDqSm90 {
  BwdParams args;
  typename Traits::TmaK tma_k;
  typename Traits::ShapeQKV shape_k;
};

}  // namespace sparge::bwd
