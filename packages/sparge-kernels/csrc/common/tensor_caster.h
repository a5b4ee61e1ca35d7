// The one nanobind conversion of a tensor argument: any object with torch.Tensor's data_ptr(), dtype, shape and
// stride() (or None) becomes a sparge::TensorArg. Only metadata is read: no DLPack export, no stream
// synchronisation, no libtorch. Anything else (or rank > 4) makes nanobind raise TypeError for the call.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>

#include "common/tensor.h"

namespace nanobind::detail {

template <>
struct type_caster<sparge::TensorArg> {
  NB_TYPE_CASTER(sparge::TensorArg, const_name("torch.Tensor"))

  bool from_python(handle src, uint8_t, cleanup_list*) noexcept {
    value = sparge::TensorArg{};
    if (src.is_none()) return true;
    try {
      object shape = getattr(src, "shape");
      object stride = getattr(src, "stride")();
      const size_t rank = len(shape);
      if (rank > size_t(sparge::TensorArg::kMaxRank) || len(stride) != rank) return false;
      value.rank = int(rank);
      for (size_t i = 0; i < rank; ++i) {
        value.shape[i] = cast<int64_t>(shape[i]);
        value.stride[i] = cast<int64_t>(stride[i]);
      }
      value.data = reinterpret_cast<void*>(cast<std::uintptr_t>(getattr(src, "data_ptr")()));
      value.dtype = sparge::dtype_from_name(str(getattr(src, "dtype")).c_str());
      return true;
    } catch (...) {  // python_error has already taken the Python error state; nanobind raises TypeError
      return false;
    }
  }

  static handle from_cpp(sparge::TensorArg const&, rv_policy, cleanup_list*) noexcept { return none().release(); }
};

}  // namespace nanobind::detail
