// Register-level helpers of the backward kernels: GEMMs from shared memory (software-pipelined ldmatrix -> mma),
// fp32 -> bf16/fp16 fragment conversion, and the accumulator -> A-operand register relayout.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace sparge::bwd {

using namespace cute;

// acc += A · Bᵀ with both operands in shared memory. tCsA/tCsB: the copy-partitioned smem operands
// (CPY, CPY_M, CPY_K); tCrA/tCrB: the MMA register fragments. Loads k-slice k+1 while multiplying slice k.
template <class Acc, class FragA, class FragB, class SmemA, class SmemB, class TiledMma, class TiledCopyA,
          class TiledCopyB, class ThrCopyA, class ThrCopyB>
CUTE_DEVICE void gemm_ss(Acc& acc, FragA& tCrA, FragB& tCrB, SmemA const& tCsA, SmemB const& tCsB,
                         TiledMma const& tiled_mma, TiledCopyA const& copy_a, TiledCopyB const& copy_b,
                         ThrCopyA const& thr_copy_a, ThrCopyB const& thr_copy_b) {
  Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  CUTE_STATIC_ASSERT_V(size<1>(tCsA) == size<1>(tCrA_view));
  CUTE_STATIC_ASSERT_V(size<1>(tCsB) == size<1>(tCrB_view));
  CUTE_STATIC_ASSERT_V(size<2>(tCrA) == size<2>(tCrB));
  constexpr int kSlices = decltype(size<2>(tCrA))::value;
  cute::copy(copy_a, tCsA(_, _, 0), tCrA_view(_, _, 0));
  cute::copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < kSlices; ++k) {
    if (k + 1 < kSlices) {
      cute::copy(copy_a, tCsA(_, _, k + 1), tCrA_view(_, _, k + 1));
      cute::copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    }
    cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

// acc += A · Bᵀ with A already in registers (an MMA A fragment) and B in shared memory.
template <class Acc, class FragA, class FragB, class SmemB, class TiledMma, class TiledCopyB, class ThrCopyB>
CUTE_DEVICE void gemm_rs(Acc& acc, FragA const& tCrA, FragB& tCrB, SmemB const& tCsB, TiledMma const& tiled_mma,
                         TiledCopyB const& copy_b, ThrCopyB const& thr_copy_b) {
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  CUTE_STATIC_ASSERT_V(size<1>(tCsB) == size<1>(tCrB_view));
  CUTE_STATIC_ASSERT_V(size<2>(tCrA) == size<2>(tCrB));
  constexpr int kSlices = decltype(size<2>(tCrA))::value;
  cute::copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < kSlices; ++k) {
    if (k + 1 < kSlices) cute::copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

// dst = convert(src * scale), element-wise over two register fragments of equal size (round to nearest).
template <class Src, class Dst>
CUTE_DEVICE void convert_fragment(Src const& src, Dst& dst, float scale = 1.f) {
  using From = typename Src::value_type;
  using To = typename Dst::value_type;
  constexpr int kN = decltype(size(src))::value;
  static_assert(kN == decltype(size(dst))::value);
  cutlass::Array<From, kN> scaled;
  CUTE_UNROLL
  for (int i = 0; i < kN; ++i) scaled[i] = src(i) * scale;
  cutlass::NumericArrayConverter<To, From, kN> converter;
  cutlass::Array<To, kN> out = converter(scaled);
  CUTE_UNROLL
  for (int i = 0; i < kN; ++i) dst(i) = out[i];
}

// An m16n8k16 accumulator ((2,2), MMA_M, MMA_N) seen as an A operand ((2,2,2), MMA_M, MMA_N/2): two neighbouring
// n8 column blocks of the accumulator form one k16 slice of the next GEMM's A operand.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_as_a_operand(Layout const& acc_layout) {
  static_assert(decltype(size<0>(acc_layout))::value == 4);
  static_assert(decltype(rank(acc_layout))::value == 3);
  auto split = logical_divide(acc_layout, Shape<Underscore, Underscore, _2>{});  // (4, MMA_M, (2, MMA_N/2))
  return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split), get<2, 1>(split));
}

}  // namespace sparge::bwd
