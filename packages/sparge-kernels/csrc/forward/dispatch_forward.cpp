// Chooses the compiled forward kernel for a head dim, dtype and path (Hopper wgmma/TMA or portable mma.sync).
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/dispatch.h"
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
bool strides_suit_tma(FwdParams const& p) {
  auto ok = [&](int64_t row, int64_t head, int64_t batch) {
    return row > 0 && (head > 0 || p.heads == 1) && (batch > 0 || p.batch == 1);
  };
  return ok(p.q_stride.row, p.q_stride.head, p.q_stride.batch) &&
         ok(p.k_stride.row, p.k_stride.head, p.k_stride.batch) &&
         ok(p.v_stride.row, p.v_stride.head, p.v_stride.batch);
}

template <int kHeadDim, DType kDType>
void run(FwdParams const& params, ForwardPath path, cudaStream_t stream) {
#ifdef SPARGE_ARCH_90A
  if (path == ForwardPath::kSm90) {
    // A size-1 batch/head dim may carry any stride; give TMA a valid one.
    FwdParams p = params;
    if (p.heads == 1) p.q_stride.head = p.k_stride.head = p.v_stride.head = 0;
    if (p.batch == 1) p.q_stride.batch = p.k_stride.batch = p.v_stride.batch = 0;
    auto fix = [](int64_t& s, int64_t fallback) { if (s == 0) s = fallback; };
    fix(p.q_stride.head, p.q_stride.row * p.seqlen_q), fix(p.q_stride.batch, p.q_stride.head * p.heads);
    fix(p.k_stride.head, p.k_stride.row * p.seqlen_k), fix(p.k_stride.batch, p.k_stride.head * p.heads);
    fix(p.v_stride.head, p.v_stride.row * p.seqlen_k), fix(p.v_stride.batch, p.v_stride.head * p.heads);
    run_fwd_sm90<kHeadDim, kDType>(p, stream);
    return;
  }
#endif
  run_fwd_sm80<kHeadDim, kDType>(params, stream);
}

}  // namespace

ForwardPath resolve_forward_path(FwdParams const& params, ForwardPath path) {
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

void dispatch_attention_forward(FwdParams const& params, DType dtype, ForwardPath path, cudaStream_t stream) {
  path = resolve_forward_path(params, path);
  dispatch_head_dim_dtype("attention_forward", params.head_dim, dtype, [&](auto head_dim, auto element) {
    run<decltype(head_dim)::value, decltype(element)::value>(params, path, stream);
  });
}

}  // namespace sparge::fwd
