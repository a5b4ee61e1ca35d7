// Small device helpers for the mma.sync forward: accumulator re-layouts, quad reductions, conversions.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace sparge::fwd {

using namespace cute;

// An MMA accumulator viewed as (rows, cols). Each thread holds 2 rows per 16-row slab and pairs of adjacent
// columns, one pair per 8-column chunk; a row's values are spread over the 4 threads of a quad.
//   SM80 (mma.sync):  ((2, 2), MMA_M, MMA_N)     -> ((2, MMA_M), (2, MMA_N))
//   SM90 (wgmma):     ((2, 2, N/8), MMA_M, MMA_N) -> ((2, MMA_M), (2, N/8, MMA_N))
template <class Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_as_rowcol(Layout layout) {
  static_assert(decltype(rank(layout))::value == 3);
  if constexpr (decltype(rank<0>(layout))::value == 3) {
    return make_layout(make_layout(get<0, 1>(layout), get<1>(layout)),
                       make_layout(get<0, 0>(layout), get<0, 2>(layout), get<2>(layout)));
  } else {
    auto split = logical_divide(layout, Shape<_2>{});  // ((2, 2), MMA_M, MMA_N)
    return make_layout(make_layout(get<0, 1>(split), get<1>(split)),
                       make_layout(get<0, 0>(split), get<2>(split)));
  }
}

// The same accumulator (after conversion to 16-bit) re-read as the register A operand of the next MMA,
// whose K is this accumulator's N: two 8-column chunks make one k16 slice.
//   SM80: (4, MMA_M, MMA_N) -> ((4, 2), MMA_M, MMA_N / 2)
//   SM90: ((2, 2, N/8), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, N/16 * MMA_N)
template <class Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_as_a_operand(Layout layout) {
  static_assert(decltype(rank(layout))::value == 3);
  if constexpr (decltype(rank<0>(layout))::value == 3) {
    auto chunks = logical_divide(get<0, 2>(layout), Tile<_2>{});  // (2, N/16)
    return make_layout(make_layout(get<0, 0>(layout), get<0, 1>(layout), get<0, 0>(chunks)), get<1>(layout),
                       coalesce(make_layout(get<0, 1>(chunks), get<2>(layout))));
  } else {
    auto split = logical_divide(layout, Shape<X, X, _2>{});  // (4, MMA_M, (2, MMA_N / 2))
    return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split), get<2, 1>(split));
  }
}

// Reduction over the 4 threads of a quad, which together hold one accumulator row.
template <class Op>
__device__ __forceinline__ float quad_allreduce(float x, Op op) {
  x = op(x, __shfl_xor_sync(0xffffffff, x, 2));
  x = op(x, __shfl_xor_sync(0xffffffff, x, 1));
  return x;
}

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a > b ? a : b; }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// Element-type conversion of a register tensor into a new register tensor of the same layout.
template <class To, class Engine, class Layout>
__device__ __forceinline__ auto convert_fragment(Tensor<Engine, Layout> const& src) {
  using From = typename Engine::value_type;
  constexpr int kN = decltype(size(src))::value;
  Tensor dst = make_tensor<To>(src.layout());
  cutlass::NumericArrayConverter<To, From, kN> convert;
  *reinterpret_cast<cutlass::Array<To, kN>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, kN> const*>(src.data()));
  return dst;
}

// acc += A · B over the K mode, both operands staged smem -> registers one k-slice ahead of the MMA.
template <class Acc, class RegA, class RegB, class SmemA, class SmemB, class TiledMma, class CopyA, class CopyB,
          class ThrCopyA, class ThrCopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, RegA& reg_a, RegB& reg_b, SmemA const& smem_a,
                                        SmemB const& smem_b, TiledMma const& mma, CopyA const& copy_a,
                                        CopyB const& copy_b, ThrCopyA const& thr_copy_a,
                                        ThrCopyB const& thr_copy_b) {
  Tensor reg_a_view = thr_copy_a.retile_D(reg_a);
  Tensor reg_b_view = thr_copy_b.retile_D(reg_b);
  copy(copy_a, smem_a(_, _, _0{}), reg_a_view(_, _, _0{}));
  copy(copy_b, smem_b(_, _, _0{}), reg_b_view(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(reg_a); ++k) {
    if (k < size<2>(reg_a) - 1) {
      copy(copy_a, smem_a(_, _, k + 1), reg_a_view(_, _, k + 1));
      copy(copy_b, smem_b(_, _, k + 1), reg_b_view(_, _, k + 1));
    }
    cute::gemm(mma, reg_a(_, _, k), reg_b(_, _, k), acc);
  }
}

// acc += A · B with A already in registers (the probabilities P) and B staged from smem.
template <class Acc, class RegA, class RegB, class SmemB, class TiledMma, class CopyB, class ThrCopyB>
__device__ __forceinline__ void gemm_rs(Acc& acc, RegA const& reg_a, RegB& reg_b, SmemB const& smem_b,
                                        TiledMma const& mma, CopyB const& copy_b, ThrCopyB const& thr_copy_b) {
  Tensor reg_b_view = thr_copy_b.retile_D(reg_b);
  copy(copy_b, smem_b(_, _, _0{}), reg_b_view(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(reg_a); ++k) {
    if (k < size<2>(reg_a) - 1) {
      copy(copy_b, smem_b(_, _, k + 1), reg_b_view(_, _, k + 1));
    }
    cute::gemm(mma, reg_a(_, _, k), reg_b(_, _, k), acc);
  }
}

}  // namespace sparge::fwd
