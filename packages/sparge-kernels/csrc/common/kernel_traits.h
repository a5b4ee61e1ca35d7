// What the traits of every attention kernel (forward SM80 and SM90, backward) share, defined once: the tile sizes
// fixed by the block mask, the instantiation (element type, head dim) they export to their kernels, and the
// mma.sync atom of the SM80 kernels. Each kernel's traits extend MaskBlockTiles and KernelInstance, as
// flash-attention's per-kernel traits extend one base; the Hopper ones through common/kernel_traits_sm90.h.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

namespace sparge {

// A CTA's tiles are the mask's blocks: 128 query rows (block_q) by 64 keys (block_k), the only sizes the bindings
// accept (common/attention_args.h).
struct MaskBlockTiles {
  static constexpr int kBlockM = 128;  // query rows per mask block
  static constexpr int kBlockN = 64;   // keys per mask block
};

// What a kernel is instantiated for, exported as Traits::Element and Traits::kHeadDim. A separate base from
// MaskBlockTiles because it depends on the traits' template parameters: inside a traits template only the
// non-dependent MaskBlockTiles is searched, so kBlockM/kBlockN stay unqualified there, and the traits name their
// own parameters Element and kHeadDim.
template <int kHeadDim_, class Element_>
struct KernelInstance {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");  // 64-element smem rows and TMA boxes
};

// SM80 tensor-core MMA (16x8x16, fp32 accumulation) for the 16-bit element type.
template <class Element>
using MmaAtomSm80 = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                       cute::MMA_Atom<cute::SM80_16x8x16_F32F16F16F32_TN>,
                                       cute::MMA_Atom<cute::SM80_16x8x16_F32BF16BF16F32_TN>>;

}  // namespace sparge
