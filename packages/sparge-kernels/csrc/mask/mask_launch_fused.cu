// Launcher of the fused pooling + selection kernel (pool_select_fused.cuh); mask_launch.cu decides when it applies
// and checks the arguments. A translation unit of its own: its kernels compile in parallel with the others.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "common/cuda_check.h"
#include "common/device_info.h"
#include "mask/mask_launch.h"
#include "mask/pool_select_fused.cuh"

namespace sparge::mask {
namespace {

// The selection's shared memory, then the two ticket slots (16 B aligned).
size_t ticket_slots_at(int head_dim, int num_k_blocks) {
  return (select_smem_bytes<kFusedRows>(head_dim, num_k_blocks, true) + 15) / 16 * 16;
}

// CTAs of `kernel` resident per SM with `smem` bytes of dynamic shared memory, after opting it in to at least
// that much. The opt-in is the kernel's one attribute, so it only ever grows (the largest size asked for so far
// serves every smaller launch); both it and the occupancy are asked once per (device, kernel, size) in a process.
int resident_ctas_per_sm(const void* kernel, size_t smem) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, size_t> opted_in;  // (device, kernel) -> its attribute
  static std::map<std::tuple<int, const void*, size_t>, int> resident;
  int device = 0;
  SPARGE_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  size_t& attribute = opted_in[std::make_pair(device, kernel)];
  if (smem > 48 * 1024 && smem > attribute) {
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    attribute = smem;
  }
  const auto key = std::make_tuple(device, kernel, smem);
  auto it = resident.find(key);
  if (it == resident.end()) {
    int per_sm = 0;
    SPARGE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kSelectThreads, smem));
    it = resident.emplace(key, per_sm).first;
  }
  return it->second;
}

template <typename Elem, int kRowWords>
void launch_typed(const PoolSelectParams& p, cudaStream_t stream) {
  auto* kernel = pool_select_kernel<Elem, kRowWords>;
  const size_t smem = pool_select_smem_bytes(p.select.head_dim, p.select.num_k_blocks);
  const int per_sm = resident_ctas_per_sm(reinterpret_cast<const void*>(kernel), smem);
  // pool_select_fits admitted these inputs: dynamic shared memory within the opt-in limit, none static.
  SPARGE_REQUIRE(per_sm > 0, "mask prediction: the fused kernel does not fit on an SM");
  const int grid = std::min(p.tickets, per_sm * current_device_sms());  // persistent: every CTA resident
  kernel<<<grid, kSelectThreads, smem, stream>>>(p);
}

template <typename Elem>
void dispatch_row_words(const PoolSelectParams& p, bool register_rows, cudaStream_t stream) {
  const int words = (p.select.num_k_blocks + 31) / 32;
  if (register_rows && words <= kRowWordsShort) return launch_typed<Elem, kRowWordsShort>(p, stream);
  if (register_rows && words <= kRowWordsLong) return launch_typed<Elem, kRowWordsLong>(p, stream);
  launch_typed<Elem, 0>(p, stream);
}

}  // namespace

size_t pool_select_smem_bytes(int head_dim, int num_k_blocks) {
  return ticket_slots_at(head_dim, num_k_blocks) + 2 * sizeof(int);
}

void launch_pool_select(const PoolParams& pool, const SelectParams& select, uint32_t* counters, DType dtype,
                        std::uintptr_t stream) {
  PoolSelectParams p{};
  p.pool = pool;
  p.select = select;
  p.counters = counters;
  const int nq = select.num_q_blocks, nk = select.num_k_blocks;
  p.units = select.batch * select.heads;
  p.pool_tasks = (nq + nk + kPoolWarps - 1) / kPoolWarps;
  p.select_tasks = (nq + kFusedRows - 1) / kFusedRows;
  const int64_t tickets = (int64_t(p.units) + kFusedLag) * (p.pool_tasks + p.select_tasks);
  // Each CTA takes one ticket past the last: headroom for the grid (a few hundred CTAs) in the int counter.
  SPARGE_REQUIRE(tickets <= 0x7fffffff - (1 << 16), "mask prediction: too many blocks for the fused kernel");
  p.tickets = int(tickets);
  p.ticket_slots_at = int(ticket_slots_at(select.head_dim, nk));
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  SPARGE_CUDA_CHECK(cudaMemsetAsync(counters, 0, sizeof(uint32_t) * (1 + size_t(p.units)), s));
  if (dtype == DType::kBFloat16) {
    dispatch_row_words<Bf16Elem>(p, select.register_rows != 0, s);
  } else {
    dispatch_row_words<Fp16Elem>(p, select.register_rows != 0, s);
  }
  SPARGE_CHECK_LAUNCH("pool_select_kernel");
}

}  // namespace sparge::mask
