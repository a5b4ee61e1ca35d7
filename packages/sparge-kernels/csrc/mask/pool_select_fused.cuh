// Kernels 1 and 2 of mask prediction in one persistent launch, so that the memory-bound pooling of some heads runs
// while the issue-bound selection of others does: as separate launches (or head groups on two streams) they hardly
// overlap, because two selection CTAs per SM take every register and pooling CTAs find no room.
//
// Every CTA takes tickets from a global counter (PoolSelectParams). Tickets come in one segment of
// pool_tasks + select_tasks per unit (b, h): segment s holds the pooling tasks of unit s (each: one block per
// warp, pool_blocks.cuh), then the selection tasks of unit s - kFusedLag (each: 16 query blocks,
// select_blocks.cuh). A selection task spins until its unit's pooling count is complete; those tasks were handed
// out a whole segment earlier, to CTAs that are running (they never wait), so nothing deadlocks whatever the grid.
// Pooling publishes with a release (bar.sync, then one thread's fence.acq_rel + add); selection acquires the same way
// and reads the pooled keys from L2 (ld.cg, load_pooled), not through the read-only cache.
#pragma once

#include <cstdint>

#include "mask/mask_params.h"
#include "mask/pool_blocks.cuh"
#include "mask/select_blocks.cuh"

namespace sparge::mask {

constexpr int kFusedRows = 16;        // query blocks per selection task: one 16-row MMA tile
constexpr int kFusedLag = 2;          // segments between a unit's pooling and its selection
constexpr int kFusedPoolUnroll = 8;   // loads in flight per pooling lane: half the warps of an SM pool at a time
static_assert(kPoolThreads == kSelectThreads, "a CTA runs both kinds of task");

__device__ __forceinline__ uint32_t load_acquire_gpu(const uint32_t* ptr) {
  uint32_t value;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(ptr) : "memory");
  return value;
}

// After a bar.sync of the whole CTA, one thread's release covers every thread's earlier writes (cumulativity);
// an acq_rel fence, not __threadfence's sequentially consistent one (CUTLASS's GenericBarrier does the same).
__device__ __forceinline__ void add_release_gpu(uint32_t* ptr, uint32_t value) {
  asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.u32 [%0], %1;" ::"l"(ptr), "r"(value) : "memory");
}

// Scores by 3xTF32 MMAs; rows in kRowWords registers per lane (0: in shared memory). Two CTAs per SM (128
// registers), as the separate selection kernel. Dynamic shared memory: the selection's (select_smem_bytes), then
// the two ticket slots at p.ticket_slots_at; no static shared memory, so the launcher's opt-in covers it all.
template <typename Elem, int kRowWords>
__global__ void __launch_bounds__(kSelectThreads, 2) pool_select_kernel(const PoolSelectParams p) {
  constexpr int kVec = int(16 / sizeof(typename Elem::Storage));
  extern __shared__ float4 smem_f4[];
  int* next_ticket = reinterpret_cast<int*>(reinterpret_cast<char*>(smem_f4) + p.ticket_slots_at);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int nq = p.select.num_q_blocks, nk = p.select.num_k_blocks;
  const uint32_t q_tasks = uint32_t(p.units) * uint32_t(nq);
  const int segment = p.pool_tasks + p.select_tasks;
  uint32_t* pooled_count = p.counters + 1;

  if (tid == 0) next_ticket[0] = int(atomicAdd(p.counters, 1u));
  __syncthreads();
  int slot = 0;
  for (int ticket = next_ticket[0]; ticket < p.tickets; ticket = next_ticket[slot]) {
    const int seg = ticket / segment, offset = ticket - seg * segment;
    const bool pooling = offset < p.pool_tasks;  // uniform over the CTA
    // A pooling task (a few µs) takes its successor's ticket as it starts, the atomic in flight during the task.
    // A selection task (tens of µs at 14B) takes it as it ends: held that long, it would keep later units' pooling
    // tickets from running and leave their selection tasks spinning.
    int prefetched = 0;
    if (pooling && tid == 0) prefetched = int(atomicAdd(p.counters, 1u));
    int pooled_unit = -1;
    if (pooling) {
      if (seg < p.units) {
        const int block = offset * kPoolWarps + warp;  // the unit's Q blocks, then its K blocks
        if (block < nq + nk) {
          const uint32_t task = block < nq ? uint32_t(seg) * nq + block : q_tasks + uint32_t(seg) * nk + (block - nq);
          pool_block<Elem, kVec, kFusedPoolUnroll>(p.pool, task, q_tasks, lane);
        }
        pooled_unit = seg;
      }
    } else if (seg >= kFusedLag) {
      const int unit = seg - kFusedLag;
      if (tid == 0) {
        while (load_acquire_gpu(pooled_count + unit) < uint32_t(p.pool_tasks)) __nanosleep(256);
      }
      __syncthreads();
      select_blocks<kFusedRows, true, kRowWords, true>(p.select, (offset - p.pool_tasks) * kFusedRows, unit);
    }
    if (pooling && tid == 0) next_ticket[slot ^ 1] = prefetched;
    __syncthreads();  // the task's writes (and shared memory) are done; a prefetched ticket is visible
    if (tid == 0) {
      if (pooled_unit >= 0) add_release_gpu(pooled_count + pooled_unit, 1u);
      if (!pooling) next_ticket[slot ^ 1] = int(atomicAdd(p.counters, 1u));
    }
    if (!pooling) __syncthreads();  // the ticket taken just now is visible
    slot ^= 1;
  }
}

}  // namespace sparge::mask
