// The tile a backward CTA owns, from its grid position (x: the tile's block, y: head, z: batch) or from a persistent
// scheduler's TileCoord: its rows of one sequence, the walk over the kept blocks of the other, and its (batch, head) in the (B, H, L, D) operands.
// The dK/dV kernel's tile is a key block walking the query blocks that kept it (q_index); the dQ kernel's is a query
// block walking its kept key blocks (kv_index).
#pragma once

#include <cstdint>

#include "common/block_sparse.h"
#include "common/params.h"
#include "common/tensor.h"
#include "common/tile_scheduler.h"

namespace sparge::bwd {

template <int kTileRows, int kVisitedRows>  // rows of the tile's block, of a visited block
struct BwdTile {
  int block, head, batch;
  int64_t bh;      // batch * heads + head: the index of the per-(batch, head) rows of lse, delta, the workspaces
  int row0;        // the tile's first row in its sequence
  int rows_valid;  // its rows inside the sequence: < kTileRows only for the tail block
  BlockSparseWalk<kVisitedRows> walk;

  // counts/indices: the kept-block lists by tile, (B, H, num_tiles) and (B, H, num_tiles, max_blocks).
  __device__ __forceinline__ BwdTile(BwdParams const& p, TileCoord const& at, int seqlen, const int32_t* counts,
                                     const int32_t* indices, int num_tiles, int max_blocks, int seqlen_visited)
      : block(at.block),
        head(at.head),
        batch(at.batch),
        bh(int64_t(batch) * p.heads + head),
        row0(block * kTileRows),
        rows_valid(min(kTileRows, seqlen - row0)),
        walk(counts, indices, bh, num_tiles, block, max_blocks, seqlen_visited) {}

  // Row `row` of this tile's (batch, head) in a (B, H, L, D) operand with strides `s` (`base`: void* or const void*).
  template <class Element, class Void>
  __device__ __forceinline__ Element* at(Void* base, Strides const& s, int row = 0) const {
    return static_cast<Element*>(base) + batch * s.batch + head * s.head + row * s.row;
  }
};

// The dK/dV kernel's tile: a key block and the query blocks that kept it.
template <class Traits>
__device__ __forceinline__ auto key_block_tile(BwdParams const& p,
                                               TileCoord const& at = StaticTileScheduler::tile()) {
  return BwdTile<Traits::kBlockN, Traits::kBlockM>(p, at, p.seqlen_k, p.q_count, p.q_index, p.num_k_blocks,
                                                   p.num_q_blocks, p.seqlen_q);
}

// The dQ kernel's tile: a query block and its kept key blocks.
template <class Traits>
__device__ __forceinline__ auto query_block_tile(BwdParams const& p,
                                                 TileCoord const& at = StaticTileScheduler::tile()) {
  return BwdTile<Traits::kBlockM, Traits::kBlockN>(p, at, p.seqlen_q, p.kv_count,
                                                   p.kv_index, p.num_q_blocks, p.num_k_blocks, p.seqlen_k);
}

}  // namespace sparge::bwd
