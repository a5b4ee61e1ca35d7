// Tile shapes, shared-memory layouts, TMA and wgmma types of the Hopper backward (dK/dV with dQ accumulation).
// One CTA = 3 warpgroups per key block of 64: warpgroup 0 produces (TMA loads of K and V once, then per kept
// query block Q, dO (128 rows) and lse·log2e, delta into a kStages ring), warpgroups 1-2 consume (64 query rows
// each for S, dP, dS and dQ; the head dim split in halves between them for dK and dV).
#pragma once

#include <cute/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "backward/stage_skip_bwd_sm90.h"
#include "common/kernel_traits_sm90.h"
#include "common/params.h"
#include "common/tile_mailbox_sm90.h"

namespace sparge::bwd {

using namespace cute;

// The Q/dO ring is 2 stages deep (3 at D=64): a stage is 2 x 128 x D elements (64 KB at D=128), so 2 stages fit
// beside K, V, P, dS.
// kDqBulk_: how dQ reaches the fp32 accumulator (both modes non-deterministic, same sum up to fp32 order):
//   false  8-byte atomics (red.global.add.v2.f32) into the row-major (B, H, Lq_pad, D) buffer;
//   true   per warp, its dQ fragment (16 rows x D) is staged in smem in fragment order and one lane issues a bulk
//          async reduce-add (cp.reduce.async.bulk .add.f32) of those 32·F floats (8 KB at D=128) to a contiguous
//          slice of the block's 128·D floats; dq_convert_fragment_order_kernel maps them back (see mma()).
// kDsSpill_ (needs kDqBulk_): a key block whose pairs fit the spill buffer (BwdParams::ds_spill) writes each
//   stage's dS tile there instead (no dQ GEMM), and kernel_bwd_dq_sm90.h sums dQ = dS·K per query block; the
//   others take the bulk path.
template <int kHeadDim, typename Element, bool kDqBulk_ = false, bool kDsSpill_ = false>
struct KernelTraitsBwdSm90 : WarpSpecializedCtaSm90, TmaLoadsSm90<kHeadDim, Element, kHeadDim <= 64 ? 3 : 2> {
  static constexpr bool kDqBulk = kDqBulk_;
  static constexpr bool kDsSpill = kDsSpill_;
  static_assert(!kDsSpill || kDqBulk, "key blocks that do not fit the spill buffer take the bulk dQ path");
  static constexpr int kHalfDim = kHeadDim / 2;  // dK/dV columns per consumer warpgroup
  // Stages the kernel skips (backward/stage_skip_bwd_sm90.h): none; KernelTraitsBwdSm90Stages sets them.
  static constexpr uint32_t kSkipStages = 0;

  using Loads = typename KernelTraitsBwdSm90::TmaLoadsSm90;  // the base above: ring depth, tiles, TMA types
  static constexpr int kStages = Loads::kStages;  // unqualified in the layouts below

  // Q, dO, K, V rows are D elements, K-major. The swizzle atom must not be wider than the half head dim a
  // warpgroup reads of dOᵀ/Qᵀ (an MN-major B operand) for dV/dK: 128 B (64 elements) at D=128, 64 B at D=64.
  using SmemLayoutAtomQKV = std::conditional_t<kHalfDim % 64 == 0, GMMA::Layout_K_SW128_Atom<Element>,
                                               GMMA::Layout_K_SW64_Atom<Element>>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtomQKV{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutdO = SmemLayoutQ;
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtomQKV{}, typename Loads::TileKV{}));
  // Transposed views of the same bytes: (D, query rows, stage) for dV += Pᵀ·dO and dK += dSᵀ·Q, (D, keys) for
  // dQ = dS·K. The head dim is contiguous in them: MN-major B operands.
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  using SmemLayoutdOt = SmemLayoutQt;
  using SmemLayoutKt = decltype(composition(
      SmemLayoutKV{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Step<_2, _1>{})));

  // P and dS of one query block: (128 query rows, 64 keys), keys contiguous (one 128 B swizzle row), and the
  // (keys, query rows) view in which they are the MN-major A operand of dV/dK.
  using SmemLayoutPdS = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                               Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutPdSt = decltype(composition(
      SmemLayoutPdS{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, Step<_2, _1>{})));
  // One spilled dS tile: the bytes of sdS as they are (swizzled), reloaded into a 1024 B aligned buffer of the
  // same layout by the dQ kernel.
  static constexpr uint32_t kDsTileBytes = uint32_t(cute::cosize_v<SmemLayoutPdS> * sizeof(Element));

  // P/dS registers -> smem: stmatrix (8x8 b16 matrices, 4 per instruction) over the S/dP accumulator layout.
  using SmemCopyAtomPdS = Copy_Atom<SM90_U32x4_STSM_N, Element>;

  // S = Q·Kᵀ and dP = dO·Vᵀ: 128 x 64 x D, one 64-row slab per consumer warpgroup, both operands K-major.
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(),
      Layout<Shape<Int<kNumConsumerWarpgroups>, _1, _1>>{}));
  // dV += Pᵀ·dO and dK += dSᵀ·Q: 64 keys x D x 128 query rows, the head dim split between the warpgroups;
  // A = Pᵀ/dSᵀ and B = dOᵀ/Qᵀ are both MN-major views of smem.
  using TiledMmadKV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kHalfDim>, Int<kBlockM>>, GMMA::Major::MN,
                           GMMA::Major::MN>(),
      Layout<Shape<_1, Int<kNumConsumerWarpgroups>, _1>>{}));
  // dQ = dS·K: 128 x D x 64 keys, one slab per warpgroup, dS from registers (K-major), K read as (D, keys).
  using TiledMmadQ = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      Layout<Shape<Int<kNumConsumerWarpgroups>, _1, _1>>{}));

  using TmaQ = typename Loads::template TmaLoadQ<decltype(take<0, 2>(SmemLayoutQ{}))>;
  using TmaKV = typename Loads::template TmaLoadKV<SmemLayoutKV>;
  static constexpr uint32_t kRowStatBytes = uint32_t(kBlockM * sizeof(float));  // lse·log2e or delta of a block
  // One stage's transaction: Q and dO by TMA, lse·log2e and delta by bulk copies.
  static constexpr uint32_t kStageBytes = 2 * Loads::kTmaBytesQ + 2 * kRowStatBytes;

  // Bulk dQ staging (kDqBulk only). A consumer warpgroup's dQ slab is 64 x D fp32 (32 KB at D=128): both slabs
  // (64 KB) do not fit beside the D=128 kernel's 199,680 B (232,448 B is the sm_90 limit: 32 KB free). So
  // consumer warpgroup 0 stages in dq_stage (one slab, its own), warpgroup 1 in the P/dS buffers (p and ds are
  // adjacent: 2 x 128 x 64 x 2 B = 32 KB = one D=128 slab), which are dead from the moment both warpgroups'
  // dV/dK wgmmas have read them until the next stage's P/dS stores (mainloop_bwd_sm90.h orders both ends).
  static constexpr int kDqSlabFloats = (kBlockM / kNumConsumerWarpgroups) * kHeadDim;
  struct NoDqStage {};
  using DqStage = std::conditional_t<kDqBulk, cute::array_aligned<float, kDqSlabFloats, 128>, NoDqStage>;

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutdO>> dout;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutKV>> k;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutKV>> v;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutPdS>> p;
    alignas(1024) cute::array_aligned<Element, cute::cosize_v<SmemLayoutPdS>> ds;
    alignas(16) cute::array_aligned<float, kBlockM * kStages> lse_log2;
    alignas(16) cute::array_aligned<float, kBlockM * kStages> delta;
    alignas(16) typename Loads::Pipeline::SharedStorage pipeline;
    alignas(16) uint64_t barrier_kv;
    // Last, so the atomic kernel's layout (NoDqStage: within the 1024 B rounding) is that of main's.
    alignas(128) DqStage dq_stage;
    // The persistent schedule's hand-offs between tiles (kernel_bwd_sm90.h); after the rest, so the one-tile
    // kernel's layout stays as it was.
    alignas(16) uint64_t barrier_kv_free;  // the consumers' last GEMM reading K, V of a tile is done
    TileMailbox mailbox;

    __device__ float* dq_stage_floats() {
      if constexpr (kDqBulk) {
        return dq_stage.data();
      } else {
        return nullptr;  // never dereferenced: the atomic kernel stages nothing
      }
    }
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one sm_90 CTA (232,448 B opt-in limit)");
  static_assert(!kDqBulk || sizeof(DqStage) == kDqSlabFloats * sizeof(float));
  // Warpgroup 1 stages its slab across p and ds: they must be adjacent and hold it.
  static_assert(offsetof(SharedStorage, ds) == offsetof(SharedStorage, p) + sizeof(SharedStorage::p),
                "p and ds adjacent (warpgroup 1's bulk dQ staging spans both)");
  static_assert(2 * cute::cosize_v<SmemLayoutPdS> * sizeof(Element) >= kDqSlabFloats * sizeof(float),
                "P and dS hold one warpgroup's fp32 dQ slab");
};

// A profiling variant (SPARGE_PROFILE_STAGES builds only): the same tiles and layouts, kSkip a StageSkip mask of
// kernel bits (stage_skip_bwd_sm90.h). A distinct type, so the production kernel's name and code stay as they are.
// kDqBulkReduce in kSkip is not a skip but the bulk dQ mode (the `bulk_dq` variant: atomics vs bulk).
template <int kHeadDim, typename Element, uint32_t kSkip>
struct KernelTraitsBwdSm90Stages : KernelTraitsBwdSm90<kHeadDim, Element, (kSkip & kDqBulkReduce) != 0> {
  static_assert((kSkip & ~kStageSkipKernelBits) == 0, "only kernel bits are a template argument");
  static constexpr uint32_t kSkipStages = kSkip;
};

// The deterministic mode's dK/dV kernel: the Hopper kernel without the dS·K GEMM and the dQ accumulation, dQ being
// the SM80 per-query-block kernel's (a fixed order, no atomics). The code of the profiling variant `no_dq`; here
// its dK, dV are the product. One CTA per key block (the persistent schedule is instantiated for kSkipStages 0).
template <int kHeadDim, typename Element>
using KernelTraitsBwdSm90DkvOnly = KernelTraitsBwdSm90Stages<kHeadDim, Element, kSkipDqGemm>;

// What the Hopper backward kernel receives (a __grid_constant__ parameter: the TMA descriptors live in it).
template <class Traits>
struct KernelParamsBwdSm90 {
  BwdParams args;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaQ tma_dout;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  typename Traits::ShapeQKV shape_q;
  typename Traits::ShapeQKV shape_k;
};

}  // namespace sparge::bwd
