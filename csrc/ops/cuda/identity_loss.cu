// Identity loss (paper eq. 1 and 2) and its gradients with respect to f_sr, one warp per row.
// Conventions as in ../cpu/identity_loss.cpp.
#include "cuda_helpers.h"

namespace iafsr {
namespace cuda {
namespace {

template <typename T>
__global__ void identity_loss_kernel(const T* __restrict__ f_sr, const T* __restrict__ f_hr, float* cos_loss,
                                     float* mag_loss, T* grad_cos, T* grad_mag, int64_t rows, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const T* a = f_sr + row * dim;
  const T* b = f_hr + row * dim;
  double aa = 0, bb = 0, ab = 0;
  for (int64_t j = lane; j < dim; j += 32) {
    const double va = to_float(a[j]), vb = to_float(b[j]);
    aa += va * va, bb += vb * vb, ab += va * vb;
  }
  aa = __shfl_sync(0xffffffffu, warp_sum(aa), 0);
  bb = __shfl_sync(0xffffffffu, warp_sum(bb), 0);
  ab = __shfl_sync(0xffffffffu, warp_sum(ab), 0);
  const double norm_a = sqrt(aa), norm_b = sqrt(bb);
  const bool zero = norm_a == 0 || norm_b == 0;
  const double cos = zero ? 0.0 : ab / (norm_a * norm_b);
  const double gap = norm_a - norm_b;
  if (lane == 0) {
    cos_loss[row] = static_cast<float>(1.0 - cos);
    mag_loss[row] = static_cast<float>(fabs(gap));
  }
  const double cos_b = zero ? 0.0 : 1.0 / (norm_a * norm_b);
  const double cos_a = zero ? 0.0 : cos / (norm_a * norm_a);
  const double sign = gap > 0 ? 1.0 : gap < 0 ? -1.0 : gap == 0 ? 0.0 : gap;
  const double mag_a = norm_a == 0 ? 0.0 : sign / norm_a;
  for (int64_t j = lane; j < dim; j += 32) {
    const double va = to_float(a[j]), vb = to_float(b[j]);
    grad_cos[row * dim + j] = from_float<T>(static_cast<float>(cos_a * va - cos_b * vb));
    grad_mag[row * dim + j] = from_float<T>(static_cast<float>(mag_a * va));
  }
}

}  // namespace

void identity_loss(DType dtype, const void* f_sr, const void* f_hr, float* cos_loss, float* mag_loss, void* grad_cos,
                   void* grad_mag, int64_t rows, int64_t dim, intptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    identity_loss_kernel<T><<<row_blocks(rows), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(f_sr), static_cast<const T*>(f_hr), cos_loss, mag_loss, static_cast<T*>(grad_cos),
        static_cast<T*>(grad_mag), rows, dim);
  });
  check_launch("identity_loss kernel");
}

}  // namespace cuda
}  // namespace iafsr
