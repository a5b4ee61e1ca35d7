// The one static switch from runtime (head dim, dtype) to the compiled kernel instantiations, used by the
// forward and backward dispatch. Only the variants this build compiled (SPARGE_HDIM_*, SPARGE_DTYPE_*) exist.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dtype.h"

namespace sparge {

template <int kHeadDim, class F>
bool dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
#ifdef SPARGE_DTYPE_BF16
    case DType::kBFloat16:
      f(std::integral_constant<int, kHeadDim>{}, std::integral_constant<DType, DType::kBFloat16>{});
      return true;
#endif
#ifdef SPARGE_DTYPE_FP16
    case DType::kFloat16:
      f(std::integral_constant<int, kHeadDim>{}, std::integral_constant<DType, DType::kFloat16>{});
      return true;
#endif
    default:
      return false;
  }
}

// Calls f(integral_constant<int, D>, integral_constant<DType, T>) for the compiled variant (D, T) = (head_dim,
// dtype); throws std::invalid_argument naming `kernel` when this build has no such variant.
template <class F>
void dispatch_head_dim_dtype(const char* kernel, int head_dim, DType dtype, F&& f) {
  bool ran = false;
  switch (head_dim) {
#ifdef SPARGE_HDIM_64
    case 64:
      ran = dispatch_dtype<64>(dtype, f);
      break;
#endif
#ifdef SPARGE_HDIM_128
    case 128:
      ran = dispatch_dtype<128>(dtype, f);
      break;
#endif
    default:
      break;
  }
  if (!ran) {
    throw std::invalid_argument(std::string("sparge ") + kernel + ": no kernel compiled for head_dim=" +
                                std::to_string(head_dim) + " and dtype " + dtype_name(dtype) +
                                " (this build has head dims " SPARGE_BUILD_HEAD_DIMS ", dtypes " SPARGE_BUILD_DTYPES
                                "; rebuild with SPARGE_HEAD_DIMS / SPARGE_DTYPES)");
  }
}

}  // namespace sparge
