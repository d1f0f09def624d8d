// Cosine scores of row blocks on CUDA: out[i, j] = dot(a_i, b_j) * inv_a[i] * inv_b[j], where inv_* are
// reciprocal row norms (0 for zero rows). 64 x 64 tiles, 16 x 16 threads of 4 x 4 scores each.
#pragma once

#include "cuda_helpers.h"

namespace iafsr {
namespace cuda {

constexpr int kScoreTile = 64;
constexpr int kScoreDepth = 16;
constexpr int kScorePad = 4;  // keeps rows 16-byte aligned for float4 reads, spreads the stores over banks
constexpr int64_t kMaxTileRowsPerLaunch = int64_t(65535) * kScoreTile;  // gridDim.y limit

template <typename T>
__global__ void inverse_norm_kernel(const T* __restrict__ x, float* __restrict__ inv, int64_t rows, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  double s = 0;
  for (int64_t j = threadIdx.x % 32; j < dim; j += 32) {
    const double v = to_float(x[row * dim + j]);
    s += v * v;
  }
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) inv[row] = s == 0 ? 0.f : static_cast<float>(1.0 / sqrt(s));
}

template <typename T>
__global__ void score_tile_kernel(const T* __restrict__ a, const float* __restrict__ inv_a, const T* __restrict__ b,
                                  const float* __restrict__ inv_b, float* __restrict__ out, int64_t rows_a,
                                  int64_t rows_b, int64_t dim, int64_t out_stride) {
  __shared__ __align__(16) float a_tile[kScoreDepth][kScoreTile + kScorePad];
  __shared__ __align__(16) float b_tile[kScoreDepth][kScoreTile + kScorePad];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kScoreTile;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kScoreTile;
  float acc[4][4] = {};
  for (int64_t d0 = 0; d0 < dim; d0 += kScoreDepth) {
    for (int e = threadIdx.x; e < kScoreTile * kScoreDepth; e += blockDim.x) {
      const int r = e / kScoreDepth, d = e % kScoreDepth;
      const bool in_depth = d0 + d < dim;
      a_tile[d][r] = row0 + r < rows_a && in_depth ? to_float(a[(row0 + r) * dim + d0 + d]) : 0.f;
      b_tile[d][r] = col0 + r < rows_b && in_depth ? to_float(b[(col0 + r) * dim + d0 + d]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int d = 0; d < kScoreDepth; ++d) {
      const float4 av = *reinterpret_cast<const float4*>(&a_tile[d][ty * 4]);
      const float4 bv = *reinterpret_cast<const float4*>(&b_tile[d][tx * 4]);
      const float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty * 4 + i;
    if (row >= rows_a) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx * 4 + j;
      if (col < rows_b) out[row * out_stride + col] = acc[i][j] * inv_a[row] * inv_b[col];
    }
  }
}

// Launches inverse norms of `rows` rows of x into inv.
template <typename T>
void launch_inverse_norms(const T* x, float* inv, int64_t rows, int64_t dim, cudaStream_t stream) {
  inverse_norm_kernel<T><<<row_blocks(rows), kThreads, 0, stream>>>(x, inv, rows, dim);
  check_launch("row norm kernel");
}

// Scores of rows [0, rows_a) of a against all of b, in launches of at most kMaxTileRowsPerLaunch rows.
template <typename T>
void launch_scores(const T* a, const float* inv_a, const T* b, const float* inv_b, float* out, int64_t rows_a,
                   int64_t rows_b, int64_t dim, int64_t out_stride, cudaStream_t stream) {
  for (int64_t first = 0; first < rows_a; first += kMaxTileRowsPerLaunch) {
    const int64_t rows = rows_a - first < kMaxTileRowsPerLaunch ? rows_a - first : kMaxTileRowsPerLaunch;
    const dim3 grid(static_cast<unsigned int>((rows_b + kScoreTile - 1) / kScoreTile),
                    static_cast<unsigned int>((rows + kScoreTile - 1) / kScoreTile));
    score_tile_kernel<T><<<grid, kThreads, 0, stream>>>(a + first * dim, inv_a + first, b, inv_b,
                                                          out + first * out_stride, rows, rows_b, dim, out_stride);
    check_launch("score tile kernel");
  }
}

}  // namespace cuda
}  // namespace iafsr
