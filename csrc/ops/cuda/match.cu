// Top-k matching on CUDA. Probes are scored against the whole gallery in chunks of rows (a workspace of at
// most kChunkBytes), then one block per probe selects its k best with a radix select over 64-bit keys
// (score order in the high half, complemented gallery index in the low half: equal scores rank the lower
// index first, and every key is distinct), and sorts those k (k <= kCudaMatchMaxK) with a bitonic sort.
// NaN scores rank as -inf, -0.0 as 0.0, as on the CPU.
#include "../ops.h"
#include "cuda_helpers.h"
#include "score_tiles.cuh"

namespace iafsr {
namespace cuda {
namespace {

constexpr int64_t kChunkBytes = int64_t(256) << 20;
constexpr int kMaxK = static_cast<int>(kCudaMatchMaxK);

__device__ __forceinline__ uint64_t rank_key(float score, uint32_t index) {
  if (isnan(score)) score = -INFINITY;
  if (score == 0.f) score = 0.f;
  const uint32_t bits = __float_as_uint(score);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(ordered) << 32) | (0xFFFFFFFFu - index);
}

__global__ void top_k_kernel(const float* __restrict__ scores, int64_t cols, int k, int64_t* __restrict__ out_index,
                             float* __restrict__ out_score) {
  const float* row = scores + static_cast<int64_t>(blockIdx.x) * cols;
  __shared__ unsigned int histogram[256];
  __shared__ uint64_t chosen_prefix;
  __shared__ int chosen_remaining;
  __shared__ uint64_t selected[kMaxK];
  __shared__ int selected_count;

  // Radix select, 8 bits at a time from the top: the k-th largest key.
  uint64_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) histogram[i] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const uint64_t key = rank_key(row[j], static_cast<uint32_t>(j));
      if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0;
      for (int digit = 255; digit >= 0; --digit) {
        const int count = static_cast<int>(histogram[digit]);
        if (above + count >= remaining) {
          chosen_prefix = prefix | (static_cast<uint64_t>(digit) << shift);
          chosen_remaining = remaining - above;
          break;
        }
        above += count;
      }
    }
    __syncthreads();
    prefix = chosen_prefix;
    remaining = chosen_remaining;
    mask |= static_cast<uint64_t>(255) << shift;
  }

  // Exactly k keys are >= the k-th largest.
  if (threadIdx.x == 0) selected_count = 0;
  __syncthreads();
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const uint64_t key = rank_key(row[j], static_cast<uint32_t>(j));
    if (key >= prefix) {
      const int slot = atomicAdd(&selected_count, 1);
      if (slot < kMaxK) selected[slot] = key;
    }
  }
  __syncthreads();
  int padded = 1;
  while (padded < k) padded <<= 1;
  for (int i = k + threadIdx.x; i < padded; i += blockDim.x) selected[i] = 0;  // below every real key
  __syncthreads();
  // Bitonic sort, descending.
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < padded; i += blockDim.x) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool descending = (i & size) == 0;
          const uint64_t x = selected[i], y = selected[partner];
          if (descending ? x < y : x > y) selected[i] = y, selected[partner] = x;
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const uint32_t index = 0xFFFFFFFFu - static_cast<uint32_t>(selected[i] & 0xFFFFFFFFu);
    out_index[static_cast<int64_t>(blockIdx.x) * k + i] = index;
    out_score[static_cast<int64_t>(blockIdx.x) * k + i] = row[index];
  }
}

}  // namespace

void match(DType dtype, const void* probes, const void* gallery, int64_t k, int64_t* indices, float* scores,
           int64_t rows_p, int64_t rows_g, int64_t dim, intptr_t stream) {
  cudaStream_t s = as_stream(stream);
  int64_t chunk = kChunkBytes / (rows_g * static_cast<int64_t>(sizeof(float)));
  if (chunk < 1) chunk = 1;
  if (chunk > rows_p) chunk = rows_p;
  if (chunk > kMaxTileRowsPerLaunch) chunk = kMaxTileRowsPerLaunch;
  Workspace inv((rows_p + rows_g) * static_cast<int64_t>(sizeof(float)), stream);
  Workspace chunk_scores(chunk * rows_g * static_cast<int64_t>(sizeof(float)), stream);
  float* inv_p = inv.as<float>();
  float* inv_g = inv_p + rows_p;
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto ps = static_cast<const T*>(probes);
    auto gs = static_cast<const T*>(gallery);
    launch_inverse_norms(ps, inv_p, rows_p, dim, s);
    launch_inverse_norms(gs, inv_g, rows_g, dim, s);
    for (int64_t first = 0; first < rows_p; first += chunk) {
      const int64_t rows = rows_p - first < chunk ? rows_p - first : chunk;
      launch_scores(ps + first * dim, inv_p + first, gs, inv_g, chunk_scores.as<float>(), rows, rows_g, dim, rows_g, s);
      top_k_kernel<<<static_cast<unsigned int>(rows), kThreads, 0, s>>>(chunk_scores.as<float>(), rows_g,
                                                                        static_cast<int>(k), indices + first * k,
                                                                        scores + first * k);
      check_launch("match top-k kernel");
    }
  });
}

}  // namespace cuda
}  // namespace iafsr
