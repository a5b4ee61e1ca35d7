// The one block-sparse walk of the attention mainloops: which blocks of the other operand a tile visits (its
// kept-block list, ascending), how many (the trip count), and where the last one ends (the tail). Every
// mainloop asks it and nothing else: forward SM80 and SM90 walk a query block's kept key blocks (kv_count /
// kv_index), the backward dQ kernel the same, the backward dK/dV kernel a key block's kept query blocks
// (q_count / q_index). Model: the single fusion point of CUTLASS examples/88_hopper_fmha.
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

namespace sparge {

template <int kBlock>  // rows of one visited block (64 keys or 128 queries)
struct BlockSparseWalk {
  const int32_t* index;  // the tile's kept blocks, ascending; entries [0, count) are valid
  int count;             // trip count
  int seqlen;            // length of the visited sequence

  // The kept-block list of tile `tile` of (batch, head) `bh`: counts is (B, H, num_tiles), indices
  // (B, H, num_tiles, max_blocks), both contiguous.
  __device__ __forceinline__ BlockSparseWalk(const int32_t* counts, const int32_t* indices, int64_t bh, int num_tiles,
                                             int tile, int max_blocks, int seqlen_visited)
      : index(indices + (bh * num_tiles + tile) * max_blocks),
        count(counts[bh * num_tiles + tile]),
        seqlen(seqlen_visited) {}

  __device__ __forceinline__ int trip_count() const { return count; }
  // Block id visited at slot `slot` (< trip_count()).
  __device__ __forceinline__ int block(int slot) const { return index[slot]; }
  // First row of that block in the visited sequence.
  __device__ __forceinline__ int start(int slot) const { return index[slot] * kBlock; }
  // Rows of that block inside the sequence: < kBlock only for the tail block (>= kBlock means all of it).
  __device__ __forceinline__ int valid(int slot) const { return seqlen - index[slot] * kBlock; }
};

// Tail mask of a score tile: accumulator elements whose column (coord's mode 1) is at or past `valid_cols` get
// `fill`. Callers skip it when the whole block is inside the sequence.
template <class Acc, class Coord>
__device__ __forceinline__ void mask_tail_cols(Acc& acc, Coord const& coord, int valid_cols, float fill) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc); ++i) {
    if (cute::get<1>(coord(i)) >= valid_cols) acc(i) = fill;
  }
}

// The same for a tile of two kept blocks side by side (columns [0, kBlock) and [kBlock, 2 kBlock)): each half is
// masked at or past its own valid count (valid_b = 0 masks the whole second half). Callers skip it when both
// blocks are whole.
template <int kBlock, class Acc, class Coord>
__device__ __forceinline__ void mask_pair_tail_cols(Acc& acc, Coord const& coord, int valid_a, int valid_b,
                                                    float fill) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc); ++i) {
    const int col = cute::get<1>(coord(i));
    if (col < kBlock ? col >= valid_a : col - kBlock >= valid_b) acc(i) = fill;
  }
}

// The backward's form of the same tail mask, fused with the probabilities: P = exp2(S * scale_log2 - lse_log2[row])
// in place, and P = 0 for keys at or past `valid_cols` (rows from coord's mode 0 index lse_log2). kTileCols: the
// tile's width. A full tile (every key block but a sequence's last) takes a branch without the selects: with them
// in the loop, nvcc 13 predicated every element's exp2 together with a reload of its row's lse·log2e and of
// scale_log2 (32 LDS + 26 LDC per 32 elements in the Hopper backward's SASS, where 2 LDS would do).
template <int kTileCols, class Acc, class Coord>
__device__ __forceinline__ void probs_with_tail_mask(Acc& acc, Coord const& coord, int valid_cols, float scale_log2,
                                                     const float* lse_log2) {
  if (valid_cols >= kTileCols) {
    CUTE_UNROLL
    for (int i = 0; i < cute::size(acc); ++i) acc(i) = exp2f(acc(i) * scale_log2 - lse_log2[cute::get<0>(coord(i))]);
    return;
  }
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc); ++i) {
    const int row = cute::get<0>(coord(i)), col = cute::get<1>(coord(i));
    acc(i) = col < valid_cols ? exp2f(acc(i) * scale_log2 - lse_log2[row]) : 0.f;
  }
}

}  // namespace sparge
