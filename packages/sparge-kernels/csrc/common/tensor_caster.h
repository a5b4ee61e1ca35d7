// The one nanobind conversion of a tensor argument: any object with torch.Tensor's data_ptr(), dtype, shape and
// stride() (or None) becomes a sparge::TensorArg. Only metadata is read: no DLPack export, no stream
// synchronisation, no libtorch. Anything else (or rank > 4) makes nanobind raise TypeError for the call.
#pragma once

#include <nanobind/nanobind.h>

#include <cstdint>

#include "common/tensor.h"

namespace nanobind::detail {

// An op's glue passes up to a dozen tensors per call, so each conversion is kept short: torch.Size and stride()
// are tuples, read with the tuple functions of the limited API (about 0.2 us less per tensor than generic item
// access on a CPU host; the GET_SIZE/GET_ITEM macros do not exist in the stable ABI the 3.12+ wheel is built for);
// dtypes are module-level singletons, parsed from str(dtype) once and then found by identity (the GIL, held
// while arguments convert, guards the table).
struct TensorArgDtypeCache {
  static constexpr int kEntries = 16;
  PyObject* objects[kEntries] = {};
  sparge::DType dtypes[kEntries] = {};
  int size = 0;

  sparge::DType lookup(handle dtype) {
    for (int i = 0; i < size; ++i) {
      if (objects[i] == dtype.ptr()) return dtypes[i];
    }
    const sparge::DType parsed = sparge::dtype_from_name(str(dtype).c_str());
    if (size < kEntries) {
      objects[size] = dtype.inc_ref().ptr();  // kept alive: the pointer must not be reused by another object
      dtypes[size++] = parsed;
    }
    return parsed;
  }
};

inline bool read_int64_sequence(handle seq, int64_t* out, size_t rank) {
  if (PyTuple_Check(seq.ptr())) {
    if (size_t(PyTuple_Size(seq.ptr())) != rank) return false;
    for (size_t i = 0; i < rank; ++i) {
      out[i] = PyLong_AsLongLong(PyTuple_GetItem(seq.ptr(), Py_ssize_t(i)));  // borrowed
      if (out[i] == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
    }
    return true;
  }
  if (len(seq) != rank) return false;
  for (size_t i = 0; i < rank; ++i) out[i] = cast<int64_t>(seq[i]);
  return true;
}

template <>
struct type_caster<sparge::TensorArg> {
  NB_TYPE_CASTER(sparge::TensorArg, const_name("torch.Tensor"))

  bool from_python(handle src, uint8_t, cleanup_list*) noexcept {
    static TensorArgDtypeCache dtype_cache;
    value = sparge::TensorArg{};
    if (src.is_none()) return true;
    try {
      object shape = getattr(src, "shape");
      const size_t rank = len(shape);
      if (rank > size_t(sparge::TensorArg::kMaxRank)) return false;
      value.rank = int(rank);
      if (!read_int64_sequence(shape, value.shape.data(), rank)) return false;
      if (!read_int64_sequence(getattr(src, "stride")(), value.stride.data(), rank)) return false;
      value.data = reinterpret_cast<void*>(cast<std::uintptr_t>(getattr(src, "data_ptr")()));
      value.dtype = dtype_cache.lookup(getattr(src, "dtype"));
      return true;
    } catch (...) {  // python_error has already taken the Python error state; nanobind raises TypeError
      return false;
    }
  }
  static handle from_cpp(sparge::TensorArg const&, rv_policy, cleanup_list*) noexcept { return none().release(); }
};

}  // namespace nanobind::detail
