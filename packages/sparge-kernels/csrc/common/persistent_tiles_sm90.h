// The tile loops of a persistent warp-specialised CTA (the Hopper forward, the Hopper backward's persistent
// schedule), shared so that both keep the same protocol:
//   - the producer thread claims the next tile before issuing the current one's loads (the claim's latency hides
//     behind them) and hands it to the consumers through the TileMailbox;
//   - operands loaded once per tile (the forward's Q; the backward's K and V) sit in one buffer: the producer
//     reloads it only after the consumers arrived on `operands_free` for the previous loaded tile, and the
//     consumers wait on that load's barrier with the phase of their own count;
//   - a tile with nothing to do loads nothing, and both sides count only the tiles that load, so the two barriers'
//     phases stay in step.
#pragma once

#include <cutlass/arch/barrier.h>

#include "common/tile_mailbox_sm90.h"
#include "common/tile_scheduler.h"

namespace sparge {

// The producer thread. load_tile(TileCoord, wait_operands_free) issues one tile's loads and returns whether it
// loaded anything; it calls wait_operands_free() before the once-per-tile loads.
template <class LoadTile>
__device__ __forceinline__ void produce_tiles(DynamicPersistentTileScheduler const& scheduler, TileMailbox& mailbox,
                                              uint64_t* operands_free, LoadTile&& load_tile) {
  const int num_tiles = scheduler.num_tiles();
  int loads = 0;  // tiles whose once-per-tile operands this CTA has loaded
  for (int tile_id = scheduler.first_tile(), i = 0; tile_id < num_tiles; ++i) {
    const int next = scheduler.claim_next();  // in flight while this tile's loads are issued
    auto wait_operands_free = [&] {
      if (loads > 0) cutlass::arch::ClusterBarrier::wait(operands_free, (loads - 1) & 1);
    };
    if (load_tile(scheduler.decode(tile_id), wait_operands_free)) ++loads;
    mailbox.publish(i, next);
    tile_id = next;
  }
}

// Every consumer thread. consume_tile(TileCoord, operands_phase) computes one tile, waiting for its
// once-per-tile operands with phase operands_phase, and returns whether the tile loaded anything.
template <class ConsumeTile>
__device__ __forceinline__ void consume_tiles(DynamicPersistentTileScheduler const& scheduler, TileMailbox& mailbox,
                                              ConsumeTile&& consume_tile) {
  const int num_tiles = scheduler.num_tiles();
  int loads = 0;
  for (int tile_id = scheduler.first_tile(), i = 0; tile_id < num_tiles; ++i) {
    if (consume_tile(scheduler.decode(tile_id), loads & 1)) ++loads;
    tile_id = mailbox.take(i);
  }
}

}  // namespace sparge
