// Profiling entry of the Hopper backward (issue 13), compiled only with SPARGE_PROFILE_STAGES=ON (CMakeLists.txt):
// sparge_kernels._C.attention_backward_stage_profile(..., skip_stages) runs the whole backward (preprocess, the
// dK/dV kernel variant that skips `skip_stages`, the dQ conversion) on the caller's buffers, and
// _C.stage_profile_variants maps each variant's name to its skip_stages mask. The variants are the generated
// csrc/profile/bwd_stages_*_sm90.cu (csrc/generate_instantiations.py); the bits are
// backward/stage_skip_bwd_sm90.h's. tools/profile_backward_stages.py times them. Results are garbage unless
// skip_stages is 0: only timings mean something.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "backward/backward_api.h"
#include "backward/stage_skip_bwd_sm90.h"
#include "bindings.h"
#include "common/hopper_path.h"
#include "common/kernel_path.h"
#include "common/params.h"
#include "common/tensor.h"
#include "common/tensor_caster.h"
#include "profile/bwd_stage_variants.h"

#ifndef SPARGE_ARCH_90A
#error "SPARGE_PROFILE_STAGES needs a build with 90a in SPARGE_CUDA_ARCHS (CMakeLists.txt checks this)"
#endif

namespace nb = nanobind;
using namespace nb::literals;

// In sparge::bwd, so that the generated list's unqualified StageSkip bits and DType name resolve.
namespace sparge::bwd {
namespace {

constexpr const char* kWho = "sparge attention_backward_stage_profile";

// Every variant a caller can name: the generated list's kernel variants, then side_kernels_only (no dK/dV
// kernel: the host-side bit). The one list behind the error text and `_C.stage_profile_variants`.
template <class Visit>
void for_each_variant(Visit&& visit) {
#define SPARGE_VISIT_VARIANT(name, bits) visit(#name, uint32_t(bits));
  SPARGE_BWD_STAGE_VARIANTS(SPARGE_VISIT_VARIANT)
#undef SPARGE_VISIT_VARIANT
  visit("side_kernels_only", uint32_t(kSkipMainKernel));
}

// "name=mask, ..." of every variant (the error text of an unknown mask).
std::string variant_list() {
  std::string out;
  for_each_variant([&](const char* name, uint32_t bits) {
    out += std::string(out.empty() ? "" : ", ") + name + "=" + std::to_string(bits);
  });
  return out;
}

void attention_backward_stage_profile(TensorArg const& q, TensorArg const& k, TensorArg const& v,
                                      TensorArg const& out, TensorArg const& dout, TensorArg const& lse,
                                      TensorArg const& dlse, TensorArg const& kv_count, TensorArg const& kv_index,
                                      TensorArg const& q_count, TensorArg const& q_index, TensorArg const& dq,
                                      TensorArg const& dk, TensorArg const& dv, TensorArg const& lse_log2,
                                      TensorArg const& delta, TensorArg const& dq_accum, int block_q, int block_k,
                                      double scale, uint32_t skip_stages, uintptr_t stream) {
  BwdParams p = backward_params(kWho, q, k, v, out, dout, lse, dlse, kv_count, kv_index, q_count, q_index, dq, dk,
                                dv, lse_log2, delta, dq_accum, block_q, block_k, scale, /*deterministic=*/false,
                                /*dq_bulk_reduce=*/false);
  if (p.head_dim != SPARGE_BWD_STAGE_HEAD_DIM || q.dtype != SPARGE_BWD_STAGE_DTYPE) {
    throw std::invalid_argument(std::string(kWho) + ": the profiling variants exist for head dim " +
                                std::to_string(SPARGE_BWD_STAGE_HEAD_DIM) + " and bfloat16 only");
  }
  // skip_stages is checked before the device: kernel bits of a built variant, plus kSkipMainKernel or not.
  const uint32_t kernel_bits = skip_stages & kStageSkipKernelBits;
  const bool built = (skip_stages & ~(kStageSkipKernelBits | kSkipMainKernel)) == 0;
  bool known = false;
#define SPARGE_KNOWN_VARIANT(name, bits) known = known || kernel_bits == uint32_t(bits);
  SPARGE_BWD_STAGE_VARIANTS(SPARGE_KNOWN_VARIANT)
#undef SPARGE_KNOWN_VARIANT
  if (!built || !known) {
    throw std::invalid_argument(std::string(kWho) + ": no variant of this build has skip_stages=" +
                                std::to_string(skip_stages) + "; variants: " + variant_list() +
                                " (side_kernels_only's bit may be added to any)");
  }
  // Throws where the Hopper backward cannot run (GPU, strides), as path='sm90' does.
  resolve_backward_path(p, KernelPath::kSm90);
  fix_unit_dim_strides(p);  // what launch_on_path does for the production kernel
  auto s = reinterpret_cast<cudaStream_t>(stream);
#define SPARGE_RUN_VARIANT(name, bits)                                                                      \
  if (kernel_bits == uint32_t(bits)) {                                                                       \
    run_bwd_sm90_stages<SPARGE_BWD_STAGE_HEAD_DIM, SPARGE_BWD_STAGE_DTYPE, uint32_t(bits)>(p, skip_stages, s); \
    return;                                                                                                  \
  }
  SPARGE_BWD_STAGE_VARIANTS(SPARGE_RUN_VARIANT)
#undef SPARGE_RUN_VARIANT
}

}  // namespace
}  // namespace sparge::bwd

void bind_stage_profile(nb::module_& m) {
  using namespace sparge::bwd;
  nb::dict variants;
  for_each_variant([&](const char* name, uint32_t bits) { variants[name] = bits; });
  m.attr("stage_profile_variants") = variants;
  m.def("attention_backward_stage_profile", &sparge::bwd::attention_backward_stage_profile, "q"_a, "k"_a, "v"_a,
        "out"_a, "dout"_a, "lse"_a, "dlse"_a.none(), "kv_count"_a, "kv_index"_a, "q_count"_a, "q_index"_a, "dq"_a, "dk"_a,
        "dv"_a, "lse_log2"_a, "delta"_a, "dq_accum"_a, "block_q"_a, "block_k"_a, "scale"_a, "skip_stages"_a,
        "stream"_a,
        "Profiling builds only (SPARGE_PROFILE_STAGES=ON): the Hopper backward (arguments as attention_backward, "
        "non-deterministic, atomic dQ unless the variant is bulk_dq; D=128 bf16; sm_90 GPU) with the dK/dV kernel "
        "variant that skips the "
        "stages in skip_stages (a value of stage_profile_variants; backward/stage_skip_bwd_sm90.h). Outputs are "
        "meaningless unless skip_stages == 0; it exists to be timed (tools/profile_backward_stages.py).");
}
