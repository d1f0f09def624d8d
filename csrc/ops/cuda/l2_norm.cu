// Row L2 norms and normalization on CUDA, one warp per row; sums in double as on the CPU.
#include "cuda_helpers.h"

namespace iafsr {
namespace cuda {
namespace {

template <typename T>
__device__ double row_sum_squares(const T* row, int64_t dim, int lane) {
  double s = 0;
  for (int64_t j = lane; j < dim; j += 32) {
    const double v = to_float(row[j]);
    s += v * v;
  }
  return __shfl_sync(0xffffffffu, warp_sum(s), 0);
}

template <typename T>
__global__ void norm_kernel(const T* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const double s = row_sum_squares(x + row * dim, dim, threadIdx.x % 32);
  if (threadIdx.x % 32 == 0) out[row] = static_cast<float>(sqrt(s));
}

template <typename T>
__global__ void normalize_kernel(const T* __restrict__ x, double eps, T* __restrict__ out, int64_t rows, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const double norm = sqrt(row_sum_squares(x + row * dim, dim, threadIdx.x % 32));
  const double scale = 1.0 / (norm < eps ? eps : norm);  // a NaN norm stays NaN
  for (int64_t j = threadIdx.x % 32; j < dim; j += 32)
    out[row * dim + j] = from_float<T>(static_cast<float>(to_float(x[row * dim + j]) * scale));
}

}  // namespace

void l2_norm(DType dtype, const void* x, float* out, int64_t rows, int64_t dim, intptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    norm_kernel<T><<<row_blocks(rows), kThreads, 0, as_stream(stream)>>>(static_cast<const T*>(x), out, rows, dim);
  });
  check_launch("l2_norm kernel");
}

void l2_normalize(DType dtype, const void* x, double eps, void* out, int64_t rows, int64_t dim, intptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    normalize_kernel<T><<<row_blocks(rows), kThreads, 0, as_stream(stream)>>>(static_cast<const T*>(x), eps,
                                                                                static_cast<T*>(out), rows, dim);
  });
  check_launch("l2_normalize kernel");
}

}  // namespace cuda
}  // namespace iafsr
