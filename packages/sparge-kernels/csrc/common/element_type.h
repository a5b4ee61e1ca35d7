// DType tag -> CUTLASS element type, for the kernels' templates (device code and launch templates only).
#pragma once

#include <cutlass/numeric_types.h>

#include <type_traits>

#include "common/dtype.h"

namespace sparge {

template <DType kDType>
using ElementOf = std::conditional_t<
    kDType == DType::kBFloat16, cutlass::bfloat16_t,
    std::conditional_t<kDType == DType::kFloat16, cutlass::half_t,
                       std::conditional_t<kDType == DType::kFloat32, float, void>>>;

}  // namespace sparge
