// The hand-off of a persistent warp-specialised CTA's tiles: the producer thread claims each next tile (so the
// claim is in flight while it issues the current tile's loads) and publishes it in one of two slots; the
// consumer threads read it there once they are done with the current tile. Slot i % 2 carries the tile after the
// CTA's i-th; `full` and `empty` mbarriers keep a slot from being overwritten before every consumer has read it.
#pragma once

#include <cutlass/arch/barrier.h>

namespace sparge {

// The slots are read and written with ordinary shared-memory accesses, and CUTLASS's mbarrier asm declares no
// memory effects: this keeps the compiler from moving them across the arrive / wait.
__device__ __forceinline__ void compiler_fence() { asm volatile("" ::: "memory"); }

struct TileMailbox {  // lives in shared memory
  uint64_t full[2];   // the producer published the next tile in next[slot]
  uint64_t empty[2];  // the consumers have read next[slot]
  int next[2];

  using Barrier = cutlass::arch::ClusterBarrier;

  // Thread 0, before the CTA-wide sync that precedes every wait.
  __device__ void init(int num_consumers) {
    for (int slot = 0; slot < 2; ++slot) {
      Barrier::init(&full[slot], 1);
      Barrier::init(&empty[slot], num_consumers);
    }
  }
  // The producer thread, after its i-th tile (i = 0, 1, ...): `tile` comes after it.
  __device__ void publish(int i, int tile) {
    const int slot = i & 1;
    if (i >= 2) Barrier::wait(&empty[slot], ((i >> 1) & 1) ^ 1);  // tile i - 2's hand-off was read
    compiler_fence();
    next[slot] = tile;
    compiler_fence();
    Barrier::arrive(&full[slot]);
  }
  // Every consumer thread, after its i-th tile: the tile after it.
  __device__ int take(int i) {
    const int slot = i & 1;
    Barrier::wait(&full[slot], (i >> 1) & 1);
    compiler_fence();
    const int tile = next[slot];
    compiler_fence();
    Barrier::arrive(&empty[slot]);
    return tile;
  }
};

}  // namespace sparge
