// Launchers of the three mask-prediction kernels: argument checks (std::invalid_argument -> ValueError),
// load-width and tile-size dispatch, shared-memory opt-in, launch checks.
#include <cuda_runtime_api.h>

#include <mutex>
#include <string>
#include <vector>

#include "common/cuda_check.h"
#include "common/device_info.h"
#include "mask/mask_launch.h"
#include "mask/pool_blocks.cuh"
#include "mask/select_blocks.cuh"
#include "mask/transpose_mask.cuh"

namespace sparge::mask {
namespace {

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

int max_dynamic_smem() { return current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

// Widest load (in elements) that every row start of Q and K allows: aligned pointer, strides and D multiples.
int vector_width(const PoolParams& p, int elem_bytes) {
  for (int bytes = 16; bytes >= elem_bytes; bytes /= 2) {
    const int vec = bytes / elem_bytes;
    auto fits = [&](const StridedTokens& t) {
      return reinterpret_cast<std::uintptr_t>(t.ptr) % bytes == 0 && t.stride_b % vec == 0 &&
             t.stride_h % vec == 0 && t.stride_l % vec == 0;
    };
    if (p.head_dim % vec == 0 && fits(p.q) && fits(p.k)) return vec;
  }
  return 1;
}

// Launches kernel<<<grid, block, smem, stream>>>(p) with programmatic stream serialization on sm_90+ GPUs: its
// CTAs may be scheduled while the previous kernel on the stream drains, and wait (wait_for_previous_kernel) for
// that kernel's results; this hides most of the launch gap between the three mask kernels.
template <class Params>
void launch_after_previous(void (*kernel)(Params), dim3 grid, int block, size_t smem, cudaStream_t stream,
                           const Params& p) {
  const int major = current_device_attribute(cudaDevAttrComputeCapabilityMajor);
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(block);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = major >= 9 ? 1 : 0;
  SPARGE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
}

template <typename Elem, int kVec>
void launch_pool_typed(const PoolParams& p, int64_t tasks, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((tasks + kPoolWarps - 1) / kPoolWarps));  // one warp per block task
  pool_blocks_kernel<Elem, kVec><<<grid, kPoolThreads, 0, stream>>>(p);
}

template <typename Elem>
void dispatch_pool_width(const PoolParams& p, int vec, int64_t tasks, cudaStream_t stream) {
  constexpr int kMaxVec = int(16 / sizeof(typename Elem::Storage));
  if (vec >= kMaxVec) return launch_pool_typed<Elem, kMaxVec>(p, tasks, stream);
  if constexpr (kMaxVec > 4) {
    if (vec >= 4) return launch_pool_typed<Elem, 4>(p, tasks, stream);
  }
  if (vec >= 2) return launch_pool_typed<Elem, 2>(p, tasks, stream);
  return launch_pool_typed<Elem, 1>(p, tasks, stream);
}

template <int kRows, class Kernel>
void launch_select_kernel(Kernel kernel, const SelectParams& p, cudaStream_t stream) {
  const size_t smem = select_smem_bytes<kRows>(p.head_dim, p.num_k_blocks, p.tensor_scores != 0);
  if (smem > 48 * 1024) {
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  const dim3 grid((p.num_q_blocks + kRows - 1) / kRows, p.group_heads, p.batch);
  launch_after_previous(kernel, grid, kSelectThreads, smem, stream, p);
}

template <int kRows, bool kTensorScores>
void launch_select_row_storage(const SelectParams& p, cudaStream_t stream) {
  const int words = (p.num_k_blocks + 31) / 32;
  if (p.register_rows && words <= kRowWordsShort) {
    return launch_select_kernel<kRows>(select_blocks_kernel<kRows, kTensorScores, kRowWordsShort>, p, stream);
  }
  if constexpr (kRows <= 16) {
    if (p.register_rows && words <= kRowWordsLong) {
      return launch_select_kernel<kRows>(select_blocks_long_rows_kernel<kRows, kTensorScores, kRowWordsLong>, p,
                                         stream);
    }
  }
  launch_select_kernel<kRows>(select_blocks_kernel<kRows, kTensorScores, 0>, p, stream);
}

template <int kRows>
void launch_select_rows(const SelectParams& p, cudaStream_t stream) {
  if (p.tensor_scores) return launch_select_row_storage<kRows, true>(p, stream);
  launch_select_row_storage<kRows, false>(p, stream);
}

// Query blocks per selection CTA: 16, or 8 when that leaves fewer than two CTAs per SM. Measured on an H100
// (tools/results/mask_2026-11-23.md): 8 is best for the 1.3B shape (192 vs 384 CTAs), 16 for 14B; 32 (one
// CTA per SM) and 4 (more L2 traffic for the pooled keys) are slower on both.
int default_rows_per_cta(const SelectParams& p) {
  const int sms = current_device_sms();
  const int64_t row_groups = int64_t(p.batch) * p.group_heads;
  int rows = 16;
  while (rows > 8 && row_groups * ((p.num_q_blocks + rows - 1) / rows) < 2 * int64_t(sms)) rows /= 2;
  return rows;
}

void check_heads(int batch, int heads, int head_begin, int group_heads) {
  SPARGE_REQUIRE(batch > 0 && heads > 0, "mask prediction: empty batch or heads");
  SPARGE_REQUIRE(head_begin >= 0 && group_heads > 0 && head_begin + group_heads <= heads,
                 "mask prediction: head group outside [0, heads)");
  SPARGE_REQUIRE(group_heads <= 65535, "mask prediction: at most 65535 heads per launch");
  SPARGE_REQUIRE(batch <= 65535, "mask prediction: batch at most 65535");
}

// A high-priority non-blocking stream per device and reusable events, for launch_predict's overlap.
struct SideStream {
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;
};

std::mutex side_mutex;
std::vector<SideStream> side_streams;  // indexed by device; guarded by side_mutex

SideStream& side_stream_for_current_device(size_t num_events) {
  int device = 0;
  SPARGE_CUDA_CHECK(cudaGetDevice(&device));
  if (side_streams.size() <= size_t(device)) side_streams.resize(size_t(device) + 1);
  SideStream& side = side_streams[size_t(device)];
  if (side.stream == nullptr) {
    int least = 0, greatest = 0;
    SPARGE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    SPARGE_CUDA_CHECK(cudaStreamCreateWithPriority(&side.stream, cudaStreamNonBlocking, greatest));
  }
  while (side.events.size() < num_events) {
    cudaEvent_t event = nullptr;
    SPARGE_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    side.events.push_back(event);
  }
  return side;
}

// Returns the launch's block tasks, B·G·(Nq + Nk).
int64_t check_pool(const PoolParams& p) {
  check_heads(p.batch, p.heads, p.head_begin, p.group_heads);
  SPARGE_REQUIRE(p.head_dim > 0 && p.head_dim <= kMaxHeadDim,
                 "mask pooling: head dim must be in [1, " + std::to_string(kMaxHeadDim) + "]");
  for (const StridedTokens* t : {&p.q, &p.k}) {
    SPARGE_REQUIRE(t->ptr != nullptr && t->length > 0 && t->block > 0, "mask pooling: empty input or block size");
    SPARGE_REQUIRE(t->num_blocks == (t->length + t->block - 1) / t->block, "mask pooling: num_blocks mismatch");
  }
  SPARGE_REQUIRE(p.k_ld >= p.k.num_blocks, "mask pooling: k_ld < Nk");
  const int64_t tasks = int64_t(p.batch) * p.group_heads * (int64_t(p.q.num_blocks) + p.k.num_blocks);
  SPARGE_REQUIRE(tasks <= 0x7fffffff, "mask pooling: too many blocks for one launch");
  return tasks;
}

void check_select(const SelectParams& p) {
  SPARGE_REQUIRE(p.head_dim > 0 && p.head_dim <= kMaxHeadDim,
                 "mask selection: head dim must be in [1, " + std::to_string(kMaxHeadDim) + "]");
  SPARGE_REQUIRE(p.num_q_blocks > 0 && p.num_k_blocks > 0, "mask selection: empty block grid");
  SPARGE_REQUIRE(p.topk_count >= 0 && p.topk_count <= p.num_k_blocks, "mask selection: topk_count not in [0, Nk]");
  SPARGE_REQUIRE(p.topk_count > 0 || p.topp > 0.f, "mask selection: topk_count and topp both disable selection");
  SPARGE_REQUIRE(p.bits_ld == (p.num_k_blocks + 31) / 32, "mask selection: bits_ld must be ceil(Nk / 32)");
  SPARGE_REQUIRE(p.k_ld >= p.num_k_blocks, "mask selection: k_ld < Nk");
  check_heads(p.batch, p.heads, p.head_begin, p.group_heads);
}

// Whether the fused kernel (launch_pool_select) takes these inputs: 16-bit elements in 16-byte loads, and its
// shared memory (16 score rows of Nk) within the GPU's limit.
bool pool_select_fits(const PoolParams& pool, const SelectParams& select, DType dtype) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && vector_width(pool, 2) == 8 &&
         pool_select_smem_bytes(select.head_dim, select.num_k_blocks) <= size_t(max_dynamic_smem());
}

}  // namespace

void launch_pool_blocks(const PoolParams& p, DType dtype, std::uintptr_t stream) {
  const int64_t tasks = check_pool(p);
  const cudaStream_t s = as_stream(stream);
  switch (dtype) {
    case DType::kBFloat16:
      dispatch_pool_width<Bf16Elem>(p, vector_width(p, 2), tasks, s);
      break;
    case DType::kFloat16:
      dispatch_pool_width<Fp16Elem>(p, vector_width(p, 2), tasks, s);
      break;
    case DType::kFloat32:
      dispatch_pool_width<Fp32Elem>(p, vector_width(p, 4), tasks, s);
      break;
    default:
      throw std::invalid_argument("mask pooling: dtype must be float16, bfloat16 or float32");
  }
  SPARGE_CHECK_LAUNCH("pool_blocks_kernel");
}

void launch_select_blocks(const SelectParams& p, int rows_per_cta, std::uintptr_t stream) {
  check_select(p);
  const size_t limit = size_t(max_dynamic_smem());
  const bool tensor = p.tensor_scores != 0;
  auto smem_for = [&](int rows) {
    return rows == 32   ? select_smem_bytes<32>(p.head_dim, p.num_k_blocks, tensor)
           : rows == 16 ? select_smem_bytes<16>(p.head_dim, p.num_k_blocks, tensor)
           : rows == 8  ? select_smem_bytes<8>(p.head_dim, p.num_k_blocks, tensor)
                        : select_smem_bytes<4>(p.head_dim, p.num_k_blocks, tensor);
  };
  if (rows_per_cta == 0) {
    rows_per_cta = default_rows_per_cta(p);
    while (rows_per_cta > 4 && smem_for(rows_per_cta) > limit) rows_per_cta /= 2;
  }
  SPARGE_REQUIRE(rows_per_cta == 4 || rows_per_cta == 8 || rows_per_cta == 16 || rows_per_cta == 32,
                 "mask selection: rows_per_cta must be 0, 4, 8, 16 or 32");
  SPARGE_REQUIRE(smem_for(rows_per_cta) <= limit,
                 "mask selection: " + std::to_string(p.num_k_blocks) +
                     " key blocks need more shared memory than the GPU has (use larger block_k)");
  const cudaStream_t s = as_stream(stream);
  switch (rows_per_cta) {
    case 32:
      launch_select_rows<32>(p, s);
      break;
    case 16:
      launch_select_rows<16>(p, s);
      break;
    case 8:
      launch_select_rows<8>(p, s);
      break;
    default:
      launch_select_rows<4>(p, s);
  }
  SPARGE_CHECK_LAUNCH("select_blocks_kernel");
}

void launch_transpose_mask(const TransposeParams& p, std::uintptr_t stream) {
  SPARGE_REQUIRE(p.num_q_blocks > 0 && p.num_k_blocks > 0, "mask transpose: empty block grid");
  SPARGE_REQUIRE(p.bits_ld == (p.num_k_blocks + 31) / 32, "mask transpose: bits_ld must be ceil(Nk / 32)");
  check_heads(p.batch, p.heads, p.head_begin, p.group_heads);
  const size_t smem = transpose_smem_bytes(p.num_q_blocks);
  if (smem > 48 * 1024) {
    SPARGE_REQUIRE(smem <= size_t(max_dynamic_smem()), "mask transpose: too many query blocks for shared memory");
    SPARGE_CUDA_CHECK(
        cudaFuncSetAttribute(transpose_mask_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  const dim3 grid(p.bits_ld * (32 / kTransposeBits), p.group_heads, p.batch);
  launch_after_previous(transpose_mask_kernel, grid, kTransposeThreads, smem, as_stream(stream), p);
  SPARGE_CHECK_LAUNCH("transpose_mask_kernel");
}

void launch_predict(PoolParams pool, SelectParams select, TransposeParams transpose, DType dtype,
                    int head_groups, int rows_per_cta, int tail_rows_per_cta, int fused, uint32_t* counters,
                    std::uintptr_t stream) {
  const int heads = pool.heads;
  SPARGE_REQUIRE(select.heads == heads && transpose.heads == heads, "mask prediction: heads differ between stages");
  SPARGE_REQUIRE(head_groups >= 1, "mask prediction: head_groups must be >= 1");
  SPARGE_REQUIRE(fused >= 0 && fused <= 2, "mask prediction: fused must be 0, 1 or 2");
  head_groups = head_groups < heads ? head_groups : heads;
  if (tail_rows_per_cta == 0) tail_rows_per_cta = rows_per_cta;
  auto set_group = [&](int begin, int count) {
    pool.head_begin = select.head_begin = transpose.head_begin = begin;
    pool.group_heads = select.group_heads = transpose.group_heads = count;
  };
  if (fused != 0) {
    set_group(0, heads);
    check_pool(pool);  // bad arguments are named as such, not as inputs the fused kernel does not take
    check_select(select);
    if (pool_select_fits(pool, select, dtype)) {
      SPARGE_REQUIRE(counters != nullptr, "mask prediction: the fused kernel needs the workspace's counters");
      launch_pool_select(pool, select, counters, dtype, stream);
      launch_transpose_mask(transpose, stream);
      return;
    }
    SPARGE_REQUIRE(fused == 1, "mask prediction: the fused kernel takes float16/bfloat16 Q and K whose rows allow "
                               "16-byte loads (16-byte aligned, D and the token/head/batch strides multiples of 8) "
                               "and 16 score rows of Nk in shared memory");
  }
  if (head_groups == 1) {
    set_group(0, heads);
    launch_pool_blocks(pool, dtype, stream);
    launch_select_blocks(select, rows_per_cta, stream);
    launch_transpose_mask(transpose, stream);
    return;
  }
  std::lock_guard<std::mutex> lock(side_mutex);
  SideStream& side = side_stream_for_current_device(size_t(head_groups) + 1);
  const cudaStream_t main_stream = as_stream(stream);
  const auto side_handle = reinterpret_cast<std::uintptr_t>(side.stream);
  for (int g = 0; g < head_groups; ++g) {
    // Contiguous groups of near-equal size.
    const int begin = int(int64_t(heads) * g / head_groups);
    const int end = int(int64_t(heads) * (g + 1) / head_groups);
    set_group(begin, end - begin);
    launch_pool_blocks(pool, dtype, stream);
    SPARGE_CUDA_CHECK(cudaEventRecord(side.events[size_t(g)], main_stream));
    SPARGE_CUDA_CHECK(cudaStreamWaitEvent(side.stream, side.events[size_t(g)], 0));
    launch_select_blocks(select, g + 1 == head_groups ? tail_rows_per_cta : rows_per_cta, side_handle);
    launch_transpose_mask(transpose, side_handle);
  }
  cudaEvent_t done = side.events[size_t(head_groups)];
  SPARGE_CUDA_CHECK(cudaEventRecord(done, side.stream));
  SPARGE_CUDA_CHECK(cudaStreamWaitEvent(main_stream, done, 0));
}

}  // namespace sparge::mask
