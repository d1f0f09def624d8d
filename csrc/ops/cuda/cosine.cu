// Cosine similarity of row pairs (one warp per row) and cosine matrices (tiled) on CUDA.
#include "cuda_helpers.h"
#include "score_tiles.cuh"

namespace iafsr {
namespace cuda {
namespace {

template <typename T>
__global__ void cosine_rows_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ out,
                                   int64_t rows, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  double aa = 0, bb = 0, ab = 0;
  for (int64_t j = threadIdx.x % 32; j < dim; j += 32) {
    const double va = to_float(a[row * dim + j]), vb = to_float(b[row * dim + j]);
    aa += va * va, bb += vb * vb, ab += va * vb;
  }
  aa = warp_sum(aa), bb = warp_sum(bb), ab = warp_sum(ab);
  if (threadIdx.x % 32 == 0) {
    const double norm_a = sqrt(aa), norm_b = sqrt(bb);
    out[row] = norm_a == 0 || norm_b == 0 ? 0.f : static_cast<float>(ab / (norm_a * norm_b));
  }
}

}  // namespace

void cosine_similarity(DType dtype, const void* a, const void* b, float* out, int64_t rows, int64_t dim,
                       intptr_t stream) {
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    cosine_rows_kernel<T><<<row_blocks(rows), kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), out, rows, dim);
  });
  check_launch("cosine_similarity kernel");
}

void cosine_matrix(DType dtype, const void* a, const void* b, float* out, int64_t rows_a, int64_t rows_b,
                   int64_t dim, intptr_t stream) {
  Workspace inv((rows_a + rows_b) * static_cast<int64_t>(sizeof(float)), stream);
  float* inv_a = inv.as<float>();
  float* inv_b = inv_a + rows_a;
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto as = static_cast<const T*>(a);
    auto bs = static_cast<const T*>(b);
    launch_inverse_norms(as, inv_a, rows_a, dim, as_stream(stream));
    launch_inverse_norms(bs, inv_b, rows_b, dim, as_stream(stream));
    launch_scores(as, inv_a, bs, inv_b, out, rows_a, rows_b, dim, rows_b, as_stream(stream));
  });
}

}  // namespace cuda
}  // namespace iafsr
