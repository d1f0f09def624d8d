// PixelShuffle(r) + channel-wise PReLU on CUDA (float32, float16; arithmetic in float32).
// Input channel of output (b, c, oh, ow): (b * C_out + c) * r*r + (oh % r) * r + ow % r, pixel (oh / r, ow / r).
#include "cuda_helpers.h"

namespace iafsr {
namespace cuda {
namespace {

template <typename T, typename Index>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ slope, bool per_channel,
                               T* __restrict__ out, Index total, Index channels_out, Index h, Index w, Index r) {
  const Index wr = w * r, hr = h * r;
  for (Index o = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; o < total;
       o += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index ow = o % wr;
    Index t = o / wr;
    const Index oh = t % hr;
    t /= hr;  // b * channels_out + c
    const Index src = (((t * r + oh % r) * r + ow % r) * h + oh / r) * w + ow / r;
    const float v = to_float(x[src]);
    const float s = to_float(slope[per_channel ? t % channels_out : 0]);
    out[o] = from_float<T>(v > 0.f ? v : v * s);
  }
}

// One thread per element of x: grad_x = grad_out * (x > 0 ? 1 : slope).
template <typename T, typename Index>
__global__ void grad_x_kernel(const T* __restrict__ grad_out, const T* __restrict__ x, const T* __restrict__ slope,
                              bool per_channel, T* __restrict__ grad_x, Index total, Index channels_out, Index h,
                              Index w, Index r) {
  for (Index e = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index col = e % w;
    Index t = e / w;
    const Index row = t % h;
    t /= h;  // input channel over the batch: (b * channels_out + c) * r*r + i*r + j
    const Index j = t % r, i = (t / r) % r, plane = t / (r * r);
    const Index o = (plane * h * r + row * r + i) * (w * r) + col * r + j;
    const float v = to_float(x[e]), g = to_float(grad_out[o]);
    const float s = to_float(slope[per_channel ? plane % channels_out : 0]);
    grad_x[e] = from_float<T>(v > 0.f ? g : g * s);
  }
}

// One block per output channel c: sum over the batch of grad_out * x where x <= 0, in a fixed order.
template <typename T, typename Index>
__global__ void grad_slope_kernel(const T* __restrict__ grad_out, const T* __restrict__ x, float* __restrict__ sums,
                                  Index n, Index channels_out, Index h, Index w, Index r) {
  const Index c = blockIdx.x;
  const Index per_image = r * r * h * w;  // elements of x feeding channel c in one image
  float acc = 0.f;
  for (Index b = 0; b < n; ++b) {
    const Index plane = b * channels_out + c;
    for (Index e = threadIdx.x; e < per_image; e += blockDim.x) {
      const Index col = e % w, row = (e / w) % h, ij = e / (w * h);
      const Index i = ij / r, j = ij % r;
      const float v = to_float(x[plane * per_image + e]);
      if (!(v > 0.f)) acc += v * to_float(grad_out[(plane * h * r + row * r + i) * (w * r) + col * r + j]);
    }
  }
  __shared__ double partial[kThreads / 32];
  double total = warp_sum(static_cast<double>(acc));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int i = 0; i < kThreads / 32; ++i) sum += partial[i];
    sums[c] = static_cast<float>(sum);
  }
}

template <typename T>
__global__ void store_slope_grad(const float* __restrict__ sums, int64_t count, bool per_channel, T* grad_slope) {
  if (per_channel) {
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < count;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x)
      grad_slope[c] = from_float<T>(sums[c]);
  } else if (blockIdx.x == 0 && threadIdx.x == 0) {
    double total = 0;
    for (int64_t c = 0; c < count; ++c) total += sums[c];
    grad_slope[0] = from_float<T>(static_cast<float>(total));
  }
}

bool fits_int32(int64_t n) { return n < (int64_t(1) << 31) - 1; }

}  // namespace

void pixel_shuffle_prelu(DType dtype, const void* x, const void* slope, bool slope_per_channel, void* out, int64_t n,
                         int64_t channels_out, int64_t h, int64_t w, int64_t r, intptr_t stream) {
  const int64_t total = n * channels_out * h * r * w * r;
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto xs = static_cast<const T*>(x);
    auto ss = static_cast<const T*>(slope);
    auto os = static_cast<T*>(out);
    if (fits_int32(total))
      forward_kernel<T, int32_t><<<blocks_for(total), kThreads, 0, as_stream(stream)>>>(
          xs, ss, slope_per_channel, os, int32_t(total), int32_t(channels_out), int32_t(h), int32_t(w), int32_t(r));
    else
      forward_kernel<T, int64_t><<<blocks_for(total), kThreads, 0, as_stream(stream)>>>(
          xs, ss, slope_per_channel, os, total, channels_out, h, w, r);
  });
  check_launch("pixel_shuffle_prelu forward kernel");
}

void pixel_shuffle_prelu_backward(DType dtype, const void* grad_out, const void* x, const void* slope,
                                  bool slope_per_channel, void* grad_x, void* grad_slope, int64_t n,
                                  int64_t channels_out, int64_t h, int64_t w, int64_t r, intptr_t stream) {
  const int64_t total = n * channels_out * r * r * h * w;
  Workspace sums(channels_out * static_cast<int64_t>(sizeof(float)), stream);
  by_dtype(dtype, [&](auto zero) {
    using T = decltype(zero);
    auto gs = static_cast<const T*>(grad_out);
    auto xs = static_cast<const T*>(x);
    auto ss = static_cast<const T*>(slope);
    auto gx = static_cast<T*>(grad_x);
    cudaStream_t s = as_stream(stream);
    if (fits_int32(total)) {
      grad_x_kernel<T, int32_t><<<blocks_for(total), kThreads, 0, s>>>(
          gs, xs, ss, slope_per_channel, gx, int32_t(total), int32_t(channels_out), int32_t(h), int32_t(w), int32_t(r));
      check_launch("pixel_shuffle_prelu backward (grad_x) kernel");
      grad_slope_kernel<T, int32_t><<<static_cast<unsigned int>(channels_out), kThreads, 0, s>>>(
          gs, xs, sums.as<float>(), int32_t(n), int32_t(channels_out), int32_t(h), int32_t(w), int32_t(r));
    } else {
      grad_x_kernel<T, int64_t><<<blocks_for(total), kThreads, 0, s>>>(gs, xs, ss, slope_per_channel, gx, total,
                                                                        channels_out, h, w, r);
      check_launch("pixel_shuffle_prelu backward (grad_x) kernel");
      grad_slope_kernel<T, int64_t><<<static_cast<unsigned int>(channels_out), kThreads, 0, s>>>(
          gs, xs, sums.as<float>(), n, channels_out, h, w, r);
    }
    check_launch("pixel_shuffle_prelu backward (grad_slope) kernel");
    store_slope_grad<T><<<blocks_for(channels_out), kThreads, 0, s>>>(sums.as<float>(), channels_out,
                                                                       slope_per_channel, static_cast<T*>(grad_slope));
    check_launch("pixel_shuffle_prelu backward (grad_slope store) kernel");
  });
}

}  // namespace cuda
}  // namespace iafsr
