// Chooses the compiled forward kernel for a head dim, dtype and path (Hopper wgmma/TMA or portable mma.sync).
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "forward/forward_api.h"

namespace sparge::fwd {

namespace {

bool current_device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  SPARGE_CUDA_CHECK(cudaGetDevice(&device));
  SPARGE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  SPARGE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

// TMA needs non-zero strides (multiples of 16 bytes, checked by the binding) on the dims it walks.
bool strides_suit_tma(AttentionForwardParams const& p) {
  auto ok = [&](int64_t row, int64_t head, int64_t batch) {
    return row > 0 && (head > 0 || p.heads == 1) && (batch > 0 || p.batch == 1);
  };
  return ok(p.q_row_stride, p.q_head_stride, p.q_batch_stride) &&
         ok(p.k_row_stride, p.k_head_stride, p.k_batch_stride) &&
         ok(p.v_row_stride, p.v_head_stride, p.v_batch_stride);
}

template <int kHeadDim, DType kDType>
void run(AttentionForwardParams const& params, ForwardPath path, cudaStream_t stream) {
#ifdef SPARGE_ARCH_90A
  if (path == ForwardPath::kSm90) {
    // A size-1 batch/head dim may carry any stride; give TMA a valid one.
    AttentionForwardParams p = params;
    if (p.heads == 1) p.q_head_stride = p.k_head_stride = p.v_head_stride = 0;
    if (p.batch == 1) p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = 0;
    auto fix = [](int64_t& s, int64_t fallback) { if (s == 0) s = fallback; };
    fix(p.q_head_stride, p.q_row_stride * p.seqlen_q), fix(p.q_batch_stride, p.q_head_stride * p.heads);
    fix(p.k_head_stride, p.k_row_stride * p.seqlen_k), fix(p.k_batch_stride, p.k_head_stride * p.heads);
    fix(p.v_head_stride, p.v_row_stride * p.seqlen_k), fix(p.v_batch_stride, p.v_head_stride * p.heads);
    run_attention_forward_sm90<kHeadDim, kDType>(p, stream);
    return;
  }
#endif
  run_attention_forward_sm80<kHeadDim, kDType>(params, stream);
}

template <int kHeadDim>
bool run_for_dtype(AttentionForwardParams const& params, DType dtype, ForwardPath path, cudaStream_t stream) {
  switch (dtype) {
#ifdef SPARGE_DTYPE_BF16
    case DType::kBFloat16:
      run<kHeadDim, DType::kBFloat16>(params, path, stream);
      return true;
#endif
#ifdef SPARGE_DTYPE_FP16
    case DType::kFloat16:
      run<kHeadDim, DType::kFloat16>(params, path, stream);
      return true;
#endif
    default:
      return false;
  }
}

}  // namespace

ForwardPath resolve_forward_path(AttentionForwardParams const& params, ForwardPath path) {
#ifdef SPARGE_ARCH_90A
  const bool sm90_possible = current_device_is_sm90() && strides_suit_tma(params);
#else
  const bool sm90_possible = false;
#endif
  if (path == ForwardPath::kSm90 && !sm90_possible) {
    throw std::invalid_argument(
        "the Hopper forward kernel needs a build with SPARGE_CUDA_ARCHS containing 90a, an sm_90 GPU and "
        "non-zero strides for q, k, v (this build: " SPARGE_BUILD_ARCHS ")");
  }
  if (path == ForwardPath::kAuto) return sm90_possible ? ForwardPath::kSm90 : ForwardPath::kSm80;
  return path;
}

void dispatch_attention_forward(AttentionForwardParams const& params, DType dtype, ForwardPath path,
                                cudaStream_t stream) {
  path = resolve_forward_path(params, path);
  bool ran = false;
  switch (params.head_dim) {
#ifdef SPARGE_HDIM_64
    case 64:
      ran = run_for_dtype<64>(params, dtype, path, stream);
      break;
#endif
#ifdef SPARGE_HDIM_128
    case 128:
      ran = run_for_dtype<128>(params, dtype, path, stream);
      break;
#endif
    default:
      break;
  }
  if (!ran) {
    throw std::invalid_argument(
        "sparge attention_forward: no kernel compiled for head_dim=" + std::to_string(params.head_dim) + " and dtype " +
        (dtype == DType::kBFloat16 ? "bfloat16" : "float16") + " (this build has head dims " SPARGE_BUILD_HEAD_DIMS
        ", dtypes " SPARGE_BUILD_DTYPES "; rebuild with SPARGE_HEAD_DIMS / SPARGE_DTYPES)");
  }
}

}  // namespace sparge::fwd
