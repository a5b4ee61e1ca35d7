// Python entry of the block-sparse attention backward: sparge_kernels._C.attention_backward(...).
// Tensors arrive as device pointers with element strides; the torch glue (cuda_backward.py) allocates outputs
// and workspace and passes the caller's current stream. Bad arguments raise ValueError (std::invalid_argument).
#include <nanobind/nanobind.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/string.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "backward/api.h"
#include "bindings.h"

namespace nb = nanobind;

namespace {

using sparge::bwd::BackwardParams;
using sparge::bwd::Strides;
using Strides3 = std::array<int64_t, 3>;

void require(bool cond, const std::string& msg) {
  if (!cond) throw std::invalid_argument("sparge attention_backward: " + msg);
}

// Element tensors are read and written in 16-byte rows: base and strides must keep that alignment.
Strides element_strides(const char* name, uintptr_t ptr, const Strides3& s) {
  require(ptr != 0, std::string(name) + " is a null pointer");
  require(ptr % 16 == 0, std::string(name) + " must be 16-byte aligned");
  for (int64_t x : s) {
    require(x % 8 == 0, std::string(name) + " strides must be multiples of 8 elements (16 bytes), got " +
                            std::to_string(s[0]) + "," + std::to_string(s[1]) + "," + std::to_string(s[2]));
  }
  return Strides{s[0], s[1], s[2]};
}

template <typename T>
T* pointer(const char* name, uintptr_t ptr, bool allow_null = false) {
  require(allow_null || ptr != 0, std::string(name) + " is a null pointer");
  require(ptr % 16 == 0, std::string(name) + " must be 16-byte aligned");
  return reinterpret_cast<T*>(ptr);
}

void attention_backward(const std::string& dtype, int batch, int heads, int seqlen_q, int seqlen_k, int head_dim,
                        int block_q, int block_k, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out,
                        uintptr_t dout, Strides3 q_strides, Strides3 k_strides, Strides3 v_strides,
                        Strides3 out_strides, Strides3 dout_strides, uintptr_t lse, uintptr_t dlse,
                        uintptr_t kv_count, uintptr_t kv_index, uintptr_t q_count, uintptr_t q_index, uintptr_t dq,
                        uintptr_t dk, uintptr_t dv, Strides3 dq_strides, Strides3 dk_strides, Strides3 dv_strides,
                        uintptr_t lse_log2, uintptr_t delta, uintptr_t dq_accum, double scale, bool deterministic,
                        bool dq_bulk_reduce, uintptr_t stream) {
  sparge::bwd::DType element;
  if (dtype == "bfloat16") {
    element = sparge::bwd::DType::kBFloat16;
  } else if (dtype == "float16") {
    element = sparge::bwd::DType::kFloat16;
  } else {
    throw std::invalid_argument("sparge attention_backward: dtype must be 'bfloat16' or 'float16', got '" + dtype +
                                "'");
  }
  require(block_q == 128 && block_k == 64,
          "only block_q=128, block_k=64 are implemented, got block_q=" + std::to_string(block_q) +
              ", block_k=" + std::to_string(block_k));
  require(head_dim == 64 || head_dim == 128, "head_dim must be 64 or 128, got " + std::to_string(head_dim));
  require(batch > 0 && heads > 0 && seqlen_q > 0 && seqlen_k > 0, "batch, heads, seqlen_q, seqlen_k must be > 0");
  require(heads <= 65535 && batch <= 65535, "batch and heads must be <= 65535");

  BackwardParams p;
  p.q = pointer<const void>("q", q);
  p.k = pointer<const void>("k", k);
  p.v = pointer<const void>("v", v);
  p.out = pointer<const void>("out", out);
  p.dout = pointer<const void>("dout", dout);
  p.q_stride = element_strides("q", q, q_strides);
  p.k_stride = element_strides("k", k, k_strides);
  p.v_stride = element_strides("v", v, v_strides);
  p.out_stride = element_strides("out", out, out_strides);
  p.dout_stride = element_strides("dout", dout, dout_strides);
  p.lse = pointer<const float>("lse", lse);
  p.dlse = pointer<const float>("dlse", dlse, /*allow_null=*/true);
  p.kv_count = pointer<const int32_t>("kv_count", kv_count);
  p.kv_index = pointer<const int32_t>("kv_index", kv_index);
  p.q_count = pointer<const int32_t>("q_count", q_count);
  p.q_index = pointer<const int32_t>("q_index", q_index);
  p.dq = pointer<void>("dq", dq);
  p.dk = pointer<void>("dk", dk);
  p.dv = pointer<void>("dv", dv);
  p.dq_stride = element_strides("dq", dq, dq_strides);
  p.dk_stride = element_strides("dk", dk, dk_strides);
  p.dv_stride = element_strides("dv", dv, dv_strides);
  p.lse_log2 = pointer<float>("lse_log2", lse_log2);
  p.delta = pointer<float>("delta", delta);
  p.dq_accum = pointer<float>("dq_accum", dq_accum, /*allow_null=*/deterministic);
  p.batch = batch;
  p.heads = heads;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.head_dim = head_dim;
  p.num_q_blocks = (seqlen_q + block_q - 1) / block_q;
  p.num_k_blocks = (seqlen_k + block_k - 1) / block_k;
  p.padded_q = int64_t(p.num_q_blocks) * block_q;
  p.scale = float(scale);
  p.scale_log2 = float(scale * 1.4426950408889634);
  p.deterministic = deterministic;
  p.dq_bulk_reduce = dq_bulk_reduce;
  sparge::bwd::dispatch_backward(p, element, reinterpret_cast<void*>(stream));
}

}  // namespace

void bind_attention_backward(nb::module_& m) {
  m.def("attention_backward", &attention_backward, nb::arg("dtype"), nb::arg("batch"), nb::arg("heads"),
        nb::arg("seqlen_q"), nb::arg("seqlen_k"), nb::arg("head_dim"), nb::arg("block_q"), nb::arg("block_k"),
        nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("dout"), nb::arg("q_strides"),
        nb::arg("k_strides"), nb::arg("v_strides"), nb::arg("out_strides"), nb::arg("dout_strides"),
        nb::arg("lse"), nb::arg("dlse"), nb::arg("kv_count"), nb::arg("kv_index"), nb::arg("q_count"),
        nb::arg("q_index"), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), nb::arg("dq_strides"),
        nb::arg("dk_strides"), nb::arg("dv_strides"), nb::arg("lse_log2"), nb::arg("delta"), nb::arg("dq_accum"),
        nb::arg("scale"), nb::arg("deterministic"), nb::arg("dq_bulk_reduce"), nb::arg("stream"),
        "Block-sparse attention backward on HND views: writes dq, dk, dv. Pointers are device addresses; strides "
        "are (batch, head, row) in elements; lse_log2/delta (B,H,Nq*128) and dq_accum (B,H,Nq*128,D, zeroed; "
        "unused when deterministic) are float32 workspace. dq_bulk_reduce: accumulate dQ with bulk async "
        "reduce-adds (SM >= 90) instead of 8-byte atomics.");
}
