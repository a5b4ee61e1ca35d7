// Error handling shared by all kernels: every CUDA call and every launch is checked, and a failure becomes a
// C++ exception that nanobind turns into a Python exception (std::invalid_argument -> ValueError,
// std::runtime_error -> RuntimeError). Nothing here aborts the process.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace sparge {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("sparge CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                           "): " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

}  // namespace sparge

// Checks the result of a CUDA runtime call.
#define SPARGE_CUDA_CHECK(expr)                                                   \
  do {                                                                            \
    cudaError_t sparge_err_ = (expr);                                             \
    if (sparge_err_ != cudaSuccess) {                                             \
      ::sparge::throw_cuda_error(sparge_err_, #expr, __FILE__, __LINE__);         \
    }                                                                             \
  } while (0)

// Checks that the kernel launch just made was accepted (bad configuration, too much shared memory, ...).
#define SPARGE_CHECK_LAUNCH(name)                                                 \
  do {                                                                            \
    cudaError_t sparge_err_ = cudaGetLastError();                                 \
    if (sparge_err_ != cudaSuccess) {                                             \
      ::sparge::throw_cuda_error(sparge_err_, "launch of " name, __FILE__, __LINE__); \
    }                                                                             \
  } while (0)

// Argument check that raises ValueError in Python.
#define SPARGE_REQUIRE(cond, msg)                                                 \
  do {                                                                            \
    if (!(cond)) throw std::invalid_argument(msg);                                \
  } while (0)
