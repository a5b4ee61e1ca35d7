// DType tag -> CUTLASS element type.
#pragma once

#include <cutlass/numeric_types.h>

#include <type_traits>

#include "forward/params.h"

namespace sparge::fwd {

template <DType kDType>
using ElementOf = std::conditional_t<kDType == DType::kBFloat16, cutlass::bfloat16_t, cutlass::half_t>;

}  // namespace sparge::fwd
