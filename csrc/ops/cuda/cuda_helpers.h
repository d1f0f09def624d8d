// Device-side helpers shared by the .cu files.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda_kernels.h"

namespace iafsr {
namespace cuda {

// Throws CudaUnavailable (no driver/device, no kernel image for this GPU) or std::runtime_error.
void check(cudaError_t status, const char* what);
// After a kernel launch: reports launch-configuration errors and earlier asynchronous faults.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

inline cudaStream_t as_stream(intptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items.
inline unsigned int blocks_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 65536 * 8 ? (blocks > 0 ? blocks : 1) : 65536 * 8);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Calls f(float{}) or f(__half{}) for the element type.
template <class F>
void by_dtype(DType dtype, F f) {
  if (dtype == DType::float16)
    f(__half{});
  else
    f(float{});
}

// Stream-ordered temporary device memory.
class Workspace {
 public:
  Workspace(int64_t bytes, intptr_t stream) : stream_(as_stream(stream)) {
    if (bytes > 0) check(cudaMallocAsync(&data_, static_cast<size_t>(bytes), stream_), "workspace allocation");
  }
  ~Workspace() {
    if (data_) cudaFreeAsync(data_, stream_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  cudaStream_t stream_;
};

// Row-wise pass helpers: one warp per row.
constexpr int kRowsPerBlock = kThreads / 32;
inline unsigned int row_blocks(int64_t rows) {
  return static_cast<unsigned int>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace cuda
}  // namespace iafsr
