// Picks the (head dim, dtype) instantiation of run_bwd_sm80; the instantiations live in csrc/instantiations/ and
// are compiled only for the head dims and dtypes selected at build time (SPARGE_HDIM_*, SPARGE_DTYPE_*).
#include "backward/backward_api.h"
#include "common/dispatch.h"

namespace sparge::bwd {

void dispatch_backward(BwdParams const& params, DType dtype, cudaStream_t stream) {
  dispatch_head_dim_dtype("attention_backward", params.head_dim, dtype, [&](auto head_dim, auto element) {
    run_bwd_sm80<decltype(head_dim)::value, decltype(element)::value>(params, stream);
  });
}

}  // namespace sparge::bwd
