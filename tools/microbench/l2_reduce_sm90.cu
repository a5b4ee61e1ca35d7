// How fast can an H100/H200 absorb fp32 bulk reduce-adds (cp.reduce.async.bulk .add.f32, what the Hopper
// backward's dQ accumulation issues)? Each warp of a CTA reduce-adds an 8 KB slice from shared memory into a
// 64 KB tile picked pseudo-randomly in a `target` buffer, like one (query block, key block) pair of the backward
// adds its 128 x 128 fp32 dQ tile. Buffers of 16 MB (one head of the 1.3B shape's dQ workspace: L2-resident) and
// 256 MB (the whole workspace) bound the rate the backward can reach; `tools/device/bwd_persistent_h200.sh
// l2-reduce` runs it.
//   nvcc -O3 -arch=sm_90a -o l2_reduce tools/microbench/l2_reduce_sm90.cu && ./l2_reduce
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                           \
  do {                                                                                     \
    cudaError_t e = (x);                                                                   \
    if (e != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

constexpr int kWarps = 8;
constexpr int kSliceFloats = 2048;               // 8 KB per warp per tile, as the backward's per-warp dQ slice
constexpr int kTileFloats = kWarps * kSliceFloats;  // 64 KB: one 128 x 128 fp32 dQ tile

__global__ void __launch_bounds__(kWarps * 32) reduce_tiles(float* target, int64_t num_tiles, int tiles_per_cta) {
  __shared__ __align__(128) float stage[kWarps][kSliceFloats];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = lane; i < kSliceFloats; i += 32) stage[warp][i] = 1e-3f * float(i & 7);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncwarp();
  uint64_t x = 0x9E3779B97F4A7C15ull * (blockIdx.x + 1);
  for (int t = 0; t < tiles_per_cta; ++t) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift: tiles in no particular order, as kept pairs are
    float* dst = target + int64_t(x % uint64_t(num_tiles)) * kTileFloats + warp * kSliceFloats;
    if (lane == 0) {
      asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                   ::"l"(dst), "r"(uint32_t(__cvta_generic_to_shared(&stage[warp][0]))),
                   "r"(uint32_t(kSliceFloats * sizeof(float)))
                   : "memory");
      asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
      asm volatile("cp.async.bulk.wait_group.read 4;\n" ::: "memory");  // a few in flight per warp
    }
    __syncwarp();
  }
  if (lane == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  std::printf("| target buffer | CTAs | GB reduce-added | ms | TB/s |\n| --- | ---: | ---: | ---: | ---: |\n");
  for (int64_t mb : {16, 64, 256}) {
    const int64_t num_tiles = mb * 1024 * 1024 / (kTileFloats * sizeof(float));
    float* target = nullptr;
    CHECK(cudaMalloc(&target, num_tiles * kTileFloats * sizeof(float)));
    CHECK(cudaMemset(target, 0, num_tiles * kTileFloats * sizeof(float)));
    for (int ctas_per_sm : {1, 2, 4}) {
      const int ctas = ctas_per_sm * sms, tiles_per_cta = 600;
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      reduce_tiles<<<ctas, kWarps * 32>>>(target, num_tiles, 20);  // warm-up
      CHECK(cudaEventRecord(a));
      reduce_tiles<<<ctas, kWarps * 32>>>(target, num_tiles, tiles_per_cta);
      CHECK(cudaEventRecord(b));
      CHECK(cudaEventSynchronize(b));
      CHECK(cudaGetLastError());
      float ms = 0.f;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      const double bytes = double(ctas) * tiles_per_cta * kTileFloats * sizeof(float);
      std::printf("| %lld MB | %d | %.2f | %.3f | %.2f |\n", (long long)mb, ctas, bytes / 1e9, ms, bytes / ms / 1e9);
    }
    CHECK(cudaFree(target));
  }
  return 0;
}
