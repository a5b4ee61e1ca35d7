// The one tensor argument of the extension: a device pointer, its dtype, shape and element strides, as every
// kernel family's binding receives it from Python (common/tensor_caster.h converts a torch.Tensor or None).
// Plain C++ so host code compiled without nvcc can use it.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace sparge {

// Element strides of a (B, H, L, D) view: batch, head, row (token). The head dim has stride 1.
struct Strides {
  int64_t batch = 0, head = 0, row = 0;
};

struct TensorArg {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;  // device address; nullptr for None
  DType dtype = DType::kUnknown;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> stride{};  // in elements

  bool is_none() const { return data == nullptr && rank == 0; }
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
  // Size of dim d (negative counts from the end).
  int64_t size(int d) const { return shape[d < 0 ? d + rank : d]; }
  // The (batch, head, row) strides of a (B, H, L, D) tensor.
  Strides bhl_strides() const { return Strides{stride[0], stride[1], stride[2]}; }
};

// A (B, H, L, D) operand of the attention kernels, read and written in 16-byte rows: non-null, 16-byte-aligned
// pointer, unit stride along D, and (B, H, L) strides that are non-negative multiples of 8 elements.
// Throws std::invalid_argument (ValueError) naming `who` and `name`.
inline void check_attention_operand(const char* who, const char* name, TensorArg const& t) {
  const std::string n = std::string(who) + ": " + name;
  if (t.data == nullptr) throw std::invalid_argument(n + " is a null pointer");
  if (t.rank != 4) {
    throw std::invalid_argument(n + " must be a (B, H, L, D) tensor, got rank " + std::to_string(t.rank));
  }
  if (t.stride[3] != 1) {
    throw std::invalid_argument(n + " must have a unit stride in its last (head) dim, got " +
                                std::to_string(t.stride[3]));
  }
  if (reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0) throw std::invalid_argument(n + " must be 16-byte aligned");
  for (int i = 0; i < 3; ++i) {
    if (t.stride[i] % 8 != 0 || t.stride[i] < 0) {
      throw std::invalid_argument(n + " strides must be non-negative multiples of 8 elements (16 bytes), got stride[" +
                                  std::to_string(i) + "]=" + std::to_string(t.stride[i]));
    }
  }
}

// A float32/int32 buffer the kernels index as contiguous: non-null (unless allow_none), 16-byte aligned.
inline void check_buffer(const char* who, const char* name, TensorArg const& t, bool allow_none = false) {
  const std::string n = std::string(who) + ": " + name;
  if (t.data == nullptr) {
    if (allow_none) return;
    throw std::invalid_argument(n + " is a null pointer");
  }
  if (reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0) throw std::invalid_argument(n + " must be 16-byte aligned");
}

// Row-major contiguous (dims of size 1 may have any stride), as check_buffer's callers index it.
inline bool is_contiguous(TensorArg const& t) {
  int64_t expected = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.stride[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

}  // namespace sparge
