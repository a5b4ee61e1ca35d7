// Picks the (head dim, dtype) instantiation of run_backward; the instantiations live in instantiations/*.cu and
// are compiled only for the head dims and dtypes selected at build time (SPARGE_HDIM_*, SPARGE_DTYPE_*).
#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <stdexcept>
#include <string>

#include "api.h"

namespace sparge::bwd {

template <int kHeadDim, typename Element>
void run_backward(BackwardParams const& p, cudaStream_t stream);  // launch.h, instantiated per file

namespace {

template <typename Element>
bool dispatch_head_dim(BackwardParams const& p, cudaStream_t stream) {
  switch (p.head_dim) {
#ifdef SPARGE_HDIM_64
    case 64: run_backward<64, Element>(p, stream); return true;
#endif
#ifdef SPARGE_HDIM_128
    case 128: run_backward<128, Element>(p, stream); return true;
#endif
    default: return false;
  }
}

}  // namespace

void dispatch_backward(BackwardParams const& p, DType dtype, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  bool done = false;
  if (dtype == DType::kBFloat16) {
#ifdef SPARGE_DTYPE_BF16
    done = dispatch_head_dim<cutlass::bfloat16_t>(p, stream);
#endif
  } else {
#ifdef SPARGE_DTYPE_FP16
    done = dispatch_head_dim<cutlass::half_t>(p, stream);
#endif
  }
  if (!done) {
    throw std::invalid_argument("sparge backward: no kernel for head_dim=" + std::to_string(p.head_dim) +
                                " and this dtype in this build (built: head dims " + built_head_dims() +
                                ", dtypes " + built_dtypes() + ")");
  }
}

const char* built_head_dims() { return SPARGE_BUILD_HEAD_DIMS; }
const char* built_dtypes() { return SPARGE_BUILD_DTYPES; }

}  // namespace sparge::bwd
