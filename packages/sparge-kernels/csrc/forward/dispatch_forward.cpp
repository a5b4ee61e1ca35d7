// Chooses the compiled forward instantiation for a head dim and dtype.
#include <stdexcept>
#include <string>

#include "forward/forward_api.h"

namespace sparge::fwd {

namespace {

template <int kHeadDim>
bool run_for_dtype(AttentionForwardParams const& params, DType dtype, cudaStream_t stream) {
  switch (dtype) {
#ifdef SPARGE_DTYPE_BF16
    case DType::kBFloat16:
      run_attention_forward_sm80<kHeadDim, DType::kBFloat16>(params, stream);
      return true;
#endif
#ifdef SPARGE_DTYPE_FP16
    case DType::kFloat16:
      run_attention_forward_sm80<kHeadDim, DType::kFloat16>(params, stream);
      return true;
#endif
    default:
      return false;
  }
}

}  // namespace

void dispatch_attention_forward(AttentionForwardParams const& params, DType dtype, cudaStream_t stream) {
  bool ran = false;
  switch (params.head_dim) {
#ifdef SPARGE_HDIM_64
    case 64:
      ran = run_for_dtype<64>(params, dtype, stream);
      break;
#endif
#ifdef SPARGE_HDIM_128
    case 128:
      ran = run_for_dtype<128>(params, dtype, stream);
      break;
#endif
    default:
      break;
  }
  if (!ran) {
    throw std::invalid_argument(
        "sparge attention_forward: no kernel compiled for head_dim=" + std::to_string(params.head_dim) + " and dtype " +
        (dtype == DType::kBFloat16 ? "bfloat16" : "float16") + " (this build has head dims " SPARGE_BUILD_HEAD_DIMS
        ", dtypes " SPARGE_BUILD_DTYPES "; rebuild with SPARGE_HEAD_DIMS / SPARGE_DTYPES)");
  }
}

}  // namespace sparge::fwd
