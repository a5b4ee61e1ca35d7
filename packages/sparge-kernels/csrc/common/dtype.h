// The one element-type tag of the extension: what a tensor crossing from Python holds (read from torch's dtype by
// the tensor caster, common/tensor_caster.h) and the template argument of every kernel instantiation.
// Plain C++ (no CUDA/CUTLASS types); common/element_type.h maps it to CUTLASS element types.
#pragma once

#include <string_view>

namespace sparge {

enum class DType : int { kUnknown, kFloat16, kBFloat16, kFloat32, kInt32 };

// torch's name of the dtype without the "torch." prefix ("bfloat16"); "unknown" for anything else.
inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kInt32: return "int32";
    default: return "unknown";
  }
}

// Inverse of dtype_name; accepts torch's str(dtype) ("torch.bfloat16") too. kUnknown for other types.
inline DType dtype_from_name(std::string_view name) {
  if (name.substr(0, 6) == "torch.") name.remove_prefix(6);
  for (DType d : {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kInt32}) {
    if (name == dtype_name(d)) return d;
  }
  return DType::kUnknown;
}

}  // namespace sparge
