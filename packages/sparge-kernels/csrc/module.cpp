// sparge_kernels._C: the CUDA kernels of sparge-kernels. No libtorch: tensors arrive as device pointers,
// shapes and element strides; the caller's CUDA stream arrives as an integer (torch's cuda_stream).
#include <cuda_runtime_api.h>
#include <nanobind/nanobind.h>

#include "bindings.h"

namespace nb = nanobind;

NB_MODULE(_C, m) {
  m.doc() = "sparge-kernels CUDA kernels (block-sparse attention, mask prediction)";
  // What this wheel was compiled for, so the Python glue can give clear errors for the rest.
  m.attr("build_archs") = SPARGE_BUILD_ARCHS;
  m.attr("build_head_dims") = SPARGE_BUILD_HEAD_DIMS;
  m.attr("build_dtypes") = SPARGE_BUILD_DTYPES;
  m.attr("build_cuda_version") = SPARGE_BUILD_CUDA_VERSION;  // major.minor of the nvcc that built it
  // The CUDA version the installed driver supports (e.g. 12080), 0 without a driver. cudaDriverGetVersion
  // needs no context, so it answers even when the driver is too old for this wheel's runtime.
  m.def("driver_version", []() {
    int version = 0;
    if (cudaDriverGetVersion(&version) != cudaSuccess) return 0;
    return version;
  });
  bind_attention_forward(m);
  bind_mask_prediction(m);
  bind_attention_backward(m);
#ifdef SPARGE_PROFILE_STAGES
  bind_stage_profile(m);  // profiling builds only (CMake option SPARGE_PROFILE_STAGES)
#endif
}
