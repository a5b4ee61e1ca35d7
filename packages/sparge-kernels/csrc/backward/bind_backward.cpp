// Python entry of the block-sparse attention backward: sparge_kernels._C.attention_backward(...).
// Tensors arrive through the one tensor caster (common/tensor_caster.h: device pointer, dtype, shape, element
// strides); sizes and the element type come from them. The torch glue (cuda_backward.py) allocates outputs and
// workspace and passes the caller's current stream. Bad arguments raise ValueError (std::invalid_argument).
#include <nanobind/nanobind.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "backward/backward_api.h"
#include "bindings.h"
#include "common/params.h"
#include "common/tensor.h"
#include "common/tensor_caster.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using sparge::TensorArg;

constexpr const char* kWho = "sparge attention_backward";

void require(bool cond, const std::string& msg) {
  if (!cond) throw std::invalid_argument(std::string(kWho) + ": " + msg);
}

void attention_backward(TensorArg const& q, TensorArg const& k, TensorArg const& v, TensorArg const& out,
                        TensorArg const& dout, TensorArg const& lse, TensorArg const& dlse,
                        TensorArg const& kv_count, TensorArg const& kv_index, TensorArg const& q_count,
                        TensorArg const& q_index, TensorArg const& dq, TensorArg const& dk, TensorArg const& dv,
                        TensorArg const& lse_log2, TensorArg const& delta, TensorArg const& dq_accum, int block_q,
                        int block_k, double scale, bool deterministic, bool dq_bulk_reduce, uintptr_t stream) {
  require(block_q == 128 && block_k == 64,
          "only block_q=128, block_k=64 are implemented, got block_q=" + std::to_string(block_q) +
              ", block_k=" + std::to_string(block_k));
  require(q.dtype == sparge::DType::kBFloat16 || q.dtype == sparge::DType::kFloat16,
          std::string("dtype must be bfloat16 or float16, got ") + sparge::dtype_name(q.dtype));
  struct Operand {
    const char* name;
    TensorArg const& t;
  };
  for (Operand o : {Operand{"q", q}, Operand{"k", k}, Operand{"v", v}, Operand{"out", out}, Operand{"dout", dout},
                    Operand{"dq", dq}, Operand{"dk", dk}, Operand{"dv", dv}}) {
    sparge::check_attention_operand(kWho, o.name, o.t);
  }
  for (Operand o : {Operand{"lse", lse}, Operand{"kv_count", kv_count}, Operand{"kv_index", kv_index},
                    Operand{"q_count", q_count}, Operand{"q_index", q_index}, Operand{"lse_log2", lse_log2},
                    Operand{"delta", delta}}) {
    sparge::check_buffer(kWho, o.name, o.t);
  }
  sparge::check_buffer(kWho, "dlse", dlse, /*allow_none=*/true);
  sparge::check_buffer(kWho, "dq_accum", dq_accum, /*allow_none=*/deterministic);
  const int batch = int(q.size(0)), heads = int(q.size(1)), seqlen_q = int(q.size(2)), seqlen_k = int(k.size(2));
  const int head_dim = int(q.size(3));
  require(head_dim == 64 || head_dim == 128, "head_dim must be 64 or 128, got " + std::to_string(head_dim));
  require(batch > 0 && heads > 0 && seqlen_q > 0 && seqlen_k > 0, "batch, heads, seqlen_q, seqlen_k must be > 0");
  require(heads <= 65535 && batch <= 65535, "batch and heads must be <= 65535");

  sparge::BwdParams p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.dout = dout.data;
  p.q_stride = q.bhl_strides();
  p.k_stride = k.bhl_strides();
  p.v_stride = v.bhl_strides();
  p.out_stride = out.bhl_strides();
  p.dout_stride = dout.bhl_strides();
  p.lse = lse.ptr<float>();
  p.dlse = dlse.ptr<const float>();
  p.kv_count = kv_count.ptr<const int32_t>();
  p.kv_index = kv_index.ptr<const int32_t>();
  p.q_count = q_count.ptr<const int32_t>();
  p.q_index = q_index.ptr<const int32_t>();
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.dq_stride = dq.bhl_strides();
  p.dk_stride = dk.bhl_strides();
  p.dv_stride = dv.bhl_strides();
  p.lse_log2 = lse_log2.ptr<float>();
  p.delta = delta.ptr<float>();
  p.dq_accum = dq_accum.ptr<float>();
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
  sparge::bwd::dispatch_backward(p, q.dtype, reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

void bind_attention_backward(nb::module_& m) {
  m.def("attention_backward", &attention_backward, "q"_a, "k"_a, "v"_a, "out"_a, "dout"_a, "lse"_a, "dlse"_a.none(),
        "kv_count"_a, "kv_index"_a, "q_count"_a, "q_index"_a, "dq"_a, "dk"_a, "dv"_a, "lse_log2"_a, "delta"_a,
        "dq_accum"_a.none(), "block_q"_a, "block_k"_a, "scale"_a, "deterministic"_a, "dq_bulk_reduce"_a, "stream"_a,
        "Block-sparse attention backward on (B, H, L, D) strided device tensors (bf16/fp16; sizes and dtype are "
        "read from q and k): writes dq, dk, dv. lse_log2/delta (B,H,Nq*128) and dq_accum (B,H,Nq*128,D, zeroed; "
        "None when deterministic) are float32 workspace; dlse may be None. dq_bulk_reduce: accumulate dQ with "
        "bulk async reduce-adds (SM >= 90) instead of 8-byte atomics.");
}
