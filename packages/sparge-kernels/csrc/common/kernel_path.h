// Which kernel family runs a direction (forward, backward): the portable SM80 mma.sync kernels or the Hopper
// wgmma/TMA ones. One enum, one parser for the bindings' `path` argument, one resolution rule and one launch
// switch serve both directions (each direction says only its error text, and the backward that its
// deterministic mode stays on SM80).
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dispatch.h"
#include "common/dtype.h"
#include "common/hopper_path.h"
#include "common/params.h"

namespace sparge {

enum class KernelPath { kAuto, kSm80, kSm90 };

// The bindings' `path` argument: 'auto', 'sm80' or 'sm90'; anything else throws, the message led by `who`.
inline KernelPath parse_kernel_path(std::string const& path, std::string const& who) {
  if (path == "auto") return KernelPath::kAuto;
  if (path == "sm80") return KernelPath::kSm80;
  if (path == "sm90") return KernelPath::kSm90;
  throw std::invalid_argument(who + "path must be 'auto', 'sm80' or 'sm90', got '" + path + "'");
}

// Whether the Hopper kernels can run these params: a 90a build, an sm_90 device and strides TMA can walk.
template <class Params>
bool sm90_possible(Params const& params) {
#ifdef SPARGE_ARCH_90A
  return current_device_is_sm90() && strides_suit_tma(params);
#else
  (void)params;
  return false;
#endif
}

// kSm90 where it cannot run throws `sm90_unavailable`; kAuto becomes kSm90 where it can run, else kSm80. The
// result is never kAuto.
inline KernelPath resolve_kernel_path(KernelPath path, bool sm90_possible, const char* sm90_unavailable) {
  if (path == KernelPath::kSm90 && !sm90_possible) throw std::invalid_argument(sm90_unavailable);
  if (path == KernelPath::kAuto) return sm90_possible ? KernelPath::kSm90 : KernelPath::kSm80;
  return path;
}

// The host entries of the compiled kernels: one name per family, overloaded on the direction's params, so that the
// one launch switch below serves both directions (as flash-attention declares run_mha_fwd_ and run_mha_bwd_ side
// by side). Each launch template defines its direction's; the generated csrc/instantiations/ files instantiate
// only the configured (head dim, dtype) pairs.
namespace fwd {
template <int kHeadDim, DType kDType> void run_sm80(FwdParams const& params, cudaStream_t stream);
template <int kHeadDim, DType kDType> void run_sm90(FwdParams const& params, cudaStream_t stream);
}  // namespace fwd
namespace bwd {
template <int kHeadDim, DType kDType> void run_sm80(BwdParams const& params, cudaStream_t stream);
template <int kHeadDim, DType kDType> void run_sm90(BwdParams const& params, cudaStream_t stream);
}  // namespace bwd
using bwd::run_sm80;
using bwd::run_sm90;
using fwd::run_sm80;
using fwd::run_sm90;

// For the compiled (D, T) = (params.head_dim, dtype) and a resolved `path`, runs run_sm90<D, T>(p, stream) with p
// a copy of params whose unit-dim strides are made valid for TMA, or run_sm80<D, T>(params, stream). Throws
// std::invalid_argument naming `kernel` when (D, T) was not compiled. run_sm90 is instantiated only in a 90a build.
template <class Params>
void launch_on_path(const char* kernel, Params const& params, DType dtype, [[maybe_unused]] KernelPath path,
                    cudaStream_t stream) {
  dispatch_head_dim_dtype(kernel, params.head_dim, dtype, [&](auto head_dim, auto element) {
    constexpr int kHeadDim = decltype(head_dim)::value;
    constexpr DType kDType = decltype(element)::value;
#ifdef SPARGE_ARCH_90A
    if (path == KernelPath::kSm90) {
      Params p = params;
      fix_unit_dim_strides(p);
      run_sm90<kHeadDim, kDType>(p, stream);
      return;
    }
#endif
    run_sm80<kHeadDim, kDType>(params, stream);
  });
}

}  // namespace sparge
