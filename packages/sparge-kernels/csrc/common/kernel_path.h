// Which kernel family runs a direction (forward, backward): the portable SM80 mma.sync kernels or the Hopper
// wgmma/TMA ones. One enum, one parser for the bindings' `path` argument, one resolution rule and one launch
// switch serve both directions (each direction says only what to launch and its error text).
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dispatch.h"
#include "common/dtype.h"
#include "common/hopper_path.h"

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

// The compiled variant a launch callback receives: its head dim and element type.
template <int kHeadDim_, DType kDType_>
struct KernelVariant {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr DType kDType = kDType_;
};

// For the compiled (D, T) = (params.head_dim, dtype) and a resolved `path`, calls
// run_sm90(KernelVariant<D, T>{}, p) with p a copy of params whose unit-dim strides are made valid for TMA, or
// run_sm80(KernelVariant<D, T>{}, params). Throws std::invalid_argument naming `kernel` when (D, T) was not
// compiled. run_sm90 is instantiated only in a 90a build.
template <class Params, class RunSm80, class RunSm90>
void launch_on_path(const char* kernel, Params const& params, DType dtype, [[maybe_unused]] KernelPath path,
                    RunSm80&& run_sm80, [[maybe_unused]] RunSm90&& run_sm90) {
  dispatch_head_dim_dtype(kernel, params.head_dim, dtype, [&](auto head_dim, auto element) {
    using Variant = KernelVariant<decltype(head_dim)::value, decltype(element)::value>;
#ifdef SPARGE_ARCH_90A
    if (path == KernelPath::kSm90) {
      Params p = params;
      fix_unit_dim_strides(p);
      run_sm90(Variant{}, static_cast<Params const&>(p));
      return;
    }
#endif
    run_sm80(Variant{}, params);
  });
}

}  // namespace sparge
