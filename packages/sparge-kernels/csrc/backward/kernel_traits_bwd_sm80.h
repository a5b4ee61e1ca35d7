// Tile configuration of the backward kernels (SM80 mma.sync path, also used on Hopper): block sizes fixed by the
// mask granularity, warp layouts of the tiled MMAs, swizzled shared-memory layouts and their transposed views,
// and the global <-> shared copy atoms.
#pragma once

#include <cute/tensor.hpp>

#include "common/kernel_traits.h"

namespace sparge::bwd {

using namespace cute;

template <int kHeadDim, typename Element>
struct BackwardTraits : MaskBlockTiles, KernelInstance<kHeadDim, Element> {
  // The dK/dV kernel walks a kept query block in two steps of 64 rows (keeps S and dP at 16 floats/thread).
  static constexpr int kStepRows = 64;
  static constexpr int kNWarps = 8;
  static constexpr int kNThreads = kNWarps * 32;

  using MmaAtom = MmaAtomSm80<Element>;
  // dK/dV kernel: every GEMM is 64 x (64 or D); 4 warps along M, 2 along N. N tile 32 = two n8 atoms per warp,
  // so B operands load with ldmatrix.x4.
  using TiledMmaKV = TiledMMA<MmaAtom, Layout<Shape<_4, _2, _1>>, Tile<_64, _32, _16>>;
  // dQ kernel: warps split the 128 query rows only, so each warp owns whole rows of S and feeds dS to the next
  // GEMM straight from registers.
  using TiledMmaQ = TiledMMA<MmaAtom, Layout<Shape<_8, _1, _1>>, Tile<_128, _16, _16>>;

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;            // operand stored K-major
  using SmemCopyAtomTransposed = Copy_Atom<SM75_U16x8_LDSM_T, Element>;  // operand stored M/N-major
  using SmemCopyAtomAcc = Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<32>, Element>;  // register -> smem

  // Rows of 64 elements (128 B) with an 8-row XOR swizzle: ldmatrix and 16 B cp.async are bank-conflict free.
  using SmemLayoutAtom =
      decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  // A (rows, D) tile and its (D, rows) transposed view over the same memory.
  template <int kRows>
  using SmemLayoutTile = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kRows>, Int<kHeadDim>>{}));
  template <int kRows>
  using SmemLayoutTileT = decltype(composition(
      SmemLayoutTile<kRows>{}, make_layout(Shape<Int<kHeadDim>, Int<kRows>>{}, GenRowMajor{})));
  template <int kRows>
  using SmemLayoutTileTNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutTileT<kRows>{}));
  // The tiles of the two kernels: a key block (K, V), a dK/dV step of query rows (Q, dO), a query block (dQ kernel).
  using SmemLayoutKV = SmemLayoutTile<kBlockN>;
  using SmemLayoutKVT = SmemLayoutTileT<kBlockN>;
  using SmemLayoutKVTNoSwizzle = SmemLayoutTileTNoSwizzle<kBlockN>;
  using SmemLayoutStep = SmemLayoutTile<kStepRows>;
  using SmemLayoutStepT = SmemLayoutTileT<kStepRows>;
  using SmemLayoutStepTNoSwizzle = SmemLayoutTileTNoSwizzle<kStepRows>;
  using SmemLayoutQ = SmemLayoutTile<kBlockM>;

  // P and dS of one step: (query rows, keys), and the (keys, query rows) view for dV = Pᵀ dO, dK = dSᵀ Q.
  using SmemLayoutPdS = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kStepRows>, Int<kBlockN>>{}));
  using SmemLayoutPdST = decltype(composition(
      SmemLayoutPdS{}, make_layout(Shape<Int<kBlockN>, Int<kStepRows>>{}, GenRowMajor{})));
  using SmemLayoutPdSTNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutPdST{}));

  // Global <-> shared: 16 B per thread per copy, 8 threads per 64-element row chunk, 32 rows per pass.
  using GmemThreadLayout = Layout<Shape<Int<kNThreads / 8>, _8>, Stride<_8, _1>>;
  using GmemTiledCopyLoad = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<uint128_t>, Element>{},
                                                     GmemThreadLayout{}, Layout<Shape<_1, _8>>{}));
  using GmemTiledCopyStore =
      decltype(make_tiled_copy(Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<128>, Element>{},
                               GmemThreadLayout{}, Layout<Shape<_1, _8>>{}));

  template <int kRows>
  static constexpr int kTileElems = kRows * kHeadDim;

  // dK/dV kernel shared memory (elements unless noted): K, V; Q and dO double-buffered; P, dS; lse, delta (float,
  // double-buffered). The epilogue reuses the Q/dO buffers to stage dK and dV.
  static constexpr int kSmemKVElems = kTileElems<kBlockN>;
  static constexpr int kSmemStepElems = kTileElems<kStepRows>;
  static constexpr int kSmemPdSElems = kStepRows * kBlockN;
  static constexpr size_t kSmemBytesKV =
      sizeof(Element) * (2 * kSmemKVElems + 4 * kSmemStepElems + 2 * kSmemPdSElems) + sizeof(float) * 4 * kStepRows;

  // kBulkReduce mode adds a (kStepRows, D) fp32 stage for dQ after the dK/dV kernel's buffers.
  static constexpr size_t kSmemBytesDqStage = sizeof(float) * kStepRows * kHeadDim;

  // dQ kernel shared memory: Q and dO of the query block; K and V double-buffered; lse, delta (float).
  static constexpr int kSmemQElems = kTileElems<kBlockM>;
  static constexpr size_t kSmemBytesQ =
      sizeof(Element) * (2 * kSmemQElems + 4 * kSmemKVElems) + sizeof(float) * 2 * kBlockM;
};

}  // namespace sparge::bwd
