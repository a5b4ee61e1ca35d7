// Device helpers shared by the forward and backward kernels: accumulator re-layouts, quad reductions, fragment
// conversions, the pipelined smem -> register GEMMs of the mma.sync kernels, and the row-predicated cp.async
// tile load (rows past the sequence end are zero-filled, so no garbage reaches the MMAs).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace sparge {

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
    static_assert(decltype(size<0>(layout))::value == 4);
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

// acc += A · B over the K mode with both operands in shared memory (mma.sync). tCsA/tCsB: the copy-partitioned
// smem operands (CPY, CPY_M, CPY_K); tCrA/tCrB: the MMA register fragments. Loads k-slice k+1 while
// multiplying slice k.
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

// acc += A · B with A already in registers (an MMA A fragment, e.g. the probabilities P) and B in shared memory.
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

// dst rows [0, rows_valid) = acc · scale, straight from the registers of a wgmma accumulator (values 2j, 2j+1 are
// adjacent columns: one 4-byte store each); coords gives (row, col) of every accumulator element. The Hopper
// backward's dK, dV and spilled-dQ epilogues.
template <class Element, class Acc, class Coords>
__device__ __forceinline__ void store_accumulator_pairs(Acc const& acc, Coords const& coords, Element* dst,
                                                        int64_t row_stride, int rows_valid, float scale) {
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    const int row = get<0>(coords(i)), col = get<1>(coords(i));
    if (row < rows_valid) {
      cutlass::Array<Element, 2> pair;
      pair[0] = Element(acc(i) * scale);
      pair[1] = Element(acc(i + 1) * scale);
      *reinterpret_cast<cutlass::Array<Element, 2>*>(dst + row * row_stride + col) = pair;
    }
  }
}

// cp.async of a thread's partition of a (rows, D) tile global -> shared: src/dst (CPY, CPY_M, CPY_K) from one
// tiled copy, coord the same partition of an identity tensor over the tile. Rows at or past `valid_rows`
// (sequence tail) are not read and are zero-filled instead.
// kPerSlice issues a row's copy one K slice at a time (the forward's form) instead of one call over the row (the
// backward's form): the same bytes either way; the flag only keeps each kernel's instruction schedule (SASS) as it
// was before the two copies became this one.
template <bool kPerSlice = false, class TiledCopy, class Src, class Dst, class Coord>
CUTE_DEVICE void copy_rows_zfill(TiledCopy const& tiled_copy, Src const& src, Dst&& dst, Coord const& coord,
                                 int valid_rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(dst); ++m) {
    if (get<0>(coord(0, m, 0)) < valid_rows) {
      if constexpr (kPerSlice) {
        CUTE_UNROLL
        for (int k = 0; k < size<2>(src); ++k) cute::copy(tiled_copy, src(_, m, k), dst(_, m, k));
      } else {
        cute::copy(tiled_copy, src(_, m, _), dst(_, m, _));
      }
    } else {
      cute::clear(dst(_, m, _));
    }
  }
}

}  // namespace sparge
