// Host side, shared by the forward and backward bindings: the FwdParams part of either kernel's parameters (the
// backward's BwdParams extends it) from the tensor arguments, with the checks the kernels need to be memory-safe.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include "common/params.h"
#include "common/tensor.h"

namespace sparge {

// q, k, v, out: (B, H, L, D) attention operands of one element type (bf16/fp16; taken from q); lse, kv_count,
// kv_index: contiguous buffers. Sizes come from q (B, H, Lq, D) and k (Lk). Throws std::invalid_argument
// (ValueError) starting with `who`.
inline void set_attention_params(FwdParams& p, const char* who, TensorArg const& q, TensorArg const& k,
                                 TensorArg const& v, TensorArg const& out, TensorArg const& lse,
                                 TensorArg const& kv_count, TensorArg const& kv_index, int block_q, int block_k,
                                 double scale) {
  auto require = [&](bool cond, std::string const& msg) {
    if (!cond) throw std::invalid_argument(std::string(who) + ": " + msg);
  };
  require(block_q == 128 && block_k == 64, "the CUDA kernels support block_q=128 and block_k=64 only, got block_q=" +
                                               std::to_string(block_q) + ", block_k=" + std::to_string(block_k));
  check_attention_operand(who, "q", q);
  check_attention_operand(who, "k", k);
  check_attention_operand(who, "v", v);
  check_attention_operand(who, "out", out);
  require(lse.data != nullptr && kv_count.data != nullptr && kv_index.data != nullptr,
          "lse, kv_count and kv_index must be non-null");
  require(q.dtype == DType::kBFloat16 || q.dtype == DType::kFloat16,
          std::string("dtype must be bfloat16 or float16, got ") + dtype_name(q.dtype));
  const int batch = int(q.size(0)), heads = int(q.size(1)), seqlen_q = int(q.size(2)), seqlen_k = int(k.size(2));
  require(batch > 0 && heads > 0 && seqlen_q > 0 && seqlen_k > 0,
          "batch, heads, seqlen_q and seqlen_k must be positive");
  require(batch <= 65535 && heads <= 65535, "batch and heads must be at most 65535");
  require(std::isfinite(scale) && scale > 0, "scale must be a finite positive number");

  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.lse = lse.ptr<float>();
  p.kv_count = kv_count.ptr<const int32_t>();
  p.kv_index = kv_index.ptr<const int32_t>();
  p.batch = batch;
  p.heads = heads;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.head_dim = int(q.size(3));
  p.num_q_blocks = (seqlen_q + block_q - 1) / block_q;
  p.num_k_blocks = (seqlen_k + block_k - 1) / block_k;
  p.q_stride = q.bhl_strides();
  p.k_stride = k.bhl_strides();
  p.v_stride = v.bhl_strides();
  p.out_stride = out.bhl_strides();
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
}

}  // namespace sparge
