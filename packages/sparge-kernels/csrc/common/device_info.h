// Attributes of the current CUDA device that launchers need on every call (SM count, compute capability, shared
// memory opt-in limit): queried once per (device, attribute) and cached, since they never change in a process.
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <utility>

#include "common/cuda_check.h"

namespace sparge {

inline int current_device_attribute(cudaDeviceAttr attribute) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> cache;  // (device, attribute) -> value
  int device = 0;
  SPARGE_CUDA_CHECK(cudaGetDevice(&device));
  const std::pair<int, int> key(device, int(attribute));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    int value = 0;
    SPARGE_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
    it = cache.emplace(key, value).first;
  }
  return it->second;
}

inline int current_device_sms() { return current_device_attribute(cudaDevAttrMultiProcessorCount); }

}  // namespace sparge
