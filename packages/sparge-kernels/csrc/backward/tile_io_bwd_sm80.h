// Global <-> shared tile movement of the backward kernels: row-predicated async loads (rows past the sequence end
// are zero-filled, so they produce finite zeros downstream), and the accumulator epilogue that converts a tile,
// stages it in swizzled shared memory and writes 16-byte rows to global memory with its own row stride.
#pragma once

#include <cute/tensor.hpp>

#include "backward/kernel_traits_bwd_sm80.h"
#include "common/utils.h"

namespace sparge::bwd {

using namespace cute;

// Starts cp.async loads of a (kRows, D) tile whose first row is at `gptr`; rows >= rows_valid are zero-filled.
template <class Traits, int kRows>
CUTE_DEVICE void load_tile_async(typename Traits::Element const* gptr, int64_t row_stride, int rows_valid,
                                 typename Traits::Element* smem, int tid) {
  using TileShape = Shape<Int<kRows>, Int<Traits::kHeadDim>>;
  typename Traits::GmemTiledCopyLoad gmem_copy;
  auto thr_copy = gmem_copy.get_thread_slice(tid);
  Tensor g = make_tensor(make_gmem_ptr(gptr), TileShape{}, make_stride(row_stride, _1{}));
  Tensor s = make_tensor(make_smem_ptr(smem), typename Traits::template SmemLayoutTile<kRows>{});
  Tensor tg = thr_copy.partition_S(g);
  Tensor ts = thr_copy.partition_D(s);
  Tensor tc = thr_copy.partition_D(make_identity_tensor(TileShape{}));
  copy_rows_zfill(gmem_copy, tg, ts, tc, rows_valid);
}

// Writes acc * scale (an accumulator of tiled_mma over a (kRows, D) tile) to global rows [0, rows_valid) at
// `gptr`, staging through `smem` (kRows * D elements). Ends with the tile read back from smem; the caller
// synchronizes before reusing `smem`.
template <class Traits, int kRows, class Acc, class TiledMma>
CUTE_DEVICE void store_accumulator(Acc const& acc, float scale, TiledMma const& tiled_mma,
                                   typename Traits::Element* smem, typename Traits::Element* gptr,
                                   int64_t row_stride, int rows_valid, int tid) {
  using Element = typename Traits::Element;
  using TileShape = Shape<Int<kRows>, Int<Traits::kHeadDim>>;
  Tensor s = make_tensor(make_smem_ptr(smem), typename Traits::template SmemLayoutTile<kRows>{});

  Tensor r = make_tensor<Element>(acc.layout());
  convert_fragment(acc, r, scale);
  auto smem_copy = make_tiled_copy_C(typename Traits::SmemCopyAtomAcc{}, tiled_mma);
  auto smem_thr_copy = smem_copy.get_thread_slice(tid);
  cute::copy(smem_copy, smem_thr_copy.retile_S(r), smem_thr_copy.partition_D(s));
  __syncthreads();

  typename Traits::GmemTiledCopyStore gmem_copy;
  auto thr_copy = gmem_copy.get_thread_slice(tid);
  Tensor g = make_tensor(make_gmem_ptr(gptr), TileShape{}, make_stride(row_stride, _1{}));
  Tensor ts = thr_copy.partition_S(s);
  Tensor tg = thr_copy.partition_D(g);
  Tensor tc = thr_copy.partition_D(make_identity_tensor(TileShape{}));
  Tensor tr = make_fragment_like(ts);
  cute::copy(gmem_copy, ts, tr);
  CUTE_UNROLL
  for (int m = 0; m < size<1>(tr); ++m) {
    if (get<0>(tc(0, m, 0)) < rows_valid) cute::copy(gmem_copy, tr(_, m, _), tg(_, m, _));
  }
}

// Writes zeros to global rows [0, rows_valid) of a (rows, D) tile (16 B per store).
template <class Traits>
CUTE_DEVICE void store_zero_rows(typename Traits::Element* gptr, int64_t row_stride, int rows_valid, int tid) {
  constexpr int kChunks = Traits::kHeadDim / 8;  // 16 B chunks per row
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int i = tid; i < rows_valid * kChunks; i += Traits::kNThreads) {
    const int row = i / kChunks, chunk = i % kChunks;
    *reinterpret_cast<uint4*>(gptr + row * row_stride + chunk * 8) = zero;
  }
}

}  // namespace sparge::bwd
