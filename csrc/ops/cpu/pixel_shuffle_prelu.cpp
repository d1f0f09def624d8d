// PixelShuffle(r) followed by channel-wise PReLU in one pass over memory, and its backward.
// Output row (n, c, h*r + i) interleaves input rows (n, c*r*r + i*r + j, h), j = 0..r-1.
// PReLU follows torch: y = x > 0 ? x : slope * x; dy/dx = x > 0 ? 1 : slope; dy/dslope = x > 0 ? 0 : x.
#include <algorithm>
#include <vector>

#include "../../common.h"
#include "cpu_kernels.h"
#include "simd.h"

namespace iafsr {
namespace cpu {
namespace {

inline float prelu(float v, float s) { return v > 0.f ? v : v * s; }

// out[2w] = prelu(a[w]), out[2w+1] = prelu(b[w])
void interleave2_baseline(const float* a, const float* b, float s, float* out, int64_t w) {
  for (int64_t i = 0; i < w; ++i) {
    out[2 * i] = prelu(a[i], s);
    out[2 * i + 1] = prelu(b[i], s);
  }
}

// Backward of interleave2: ga[w] = g[2w] * d(a[w]), gb[w] = g[2w+1] * d(b[w]); returns the slope gradient
// sum over this row of g * x where x <= 0.
double deinterleave2_baseline(const float* g, const float* a, const float* b, float s, float* ga, float* gb,
                              int64_t w) {
  float acc = 0.f;
  for (int64_t i = 0; i < w; ++i) {
    float g0 = g[2 * i], g1 = g[2 * i + 1];
    ga[i] = a[i] > 0.f ? g0 : g0 * s;
    gb[i] = b[i] > 0.f ? g1 : g1 * s;
    acc += (a[i] > 0.f ? 0.f : a[i] * g0) + (b[i] > 0.f ? 0.f : b[i] * g1);
  }
  return acc;
}

#if IAFSR_X86
// kStream: non-temporal stores, for outputs well above the cache sizes: the destination lines are written
// without first being read (measured here about 1.9x faster than regular stores for the 33.5 MB output of
// the benchmark). Used only for rows made of whole 64-byte lines: a line written partly by non-temporal and
// partly by regular stores is far slower than either.
template <bool kStream>
__attribute__((target("avx2"))) inline void store8(float* p, __m256 v) {
  if (kStream)
    _mm256_stream_ps(p, v);
  else
    _mm256_storeu_ps(p, v);
}

template <bool kStream>
__attribute__((target("avx2"))) void interleave2_avx2(const float* a, const float* b, float s, float* out,
                                                      int64_t w) {
  const __m256 vs = _mm256_set1_ps(s), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= w; i += 8) {
    __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
    va = _mm256_blendv_ps(_mm256_mul_ps(va, vs), va, _mm256_cmp_ps(va, zero, _CMP_GT_OQ));
    vb = _mm256_blendv_ps(_mm256_mul_ps(vb, vs), vb, _mm256_cmp_ps(vb, zero, _CMP_GT_OQ));
    __m256 lo = _mm256_unpacklo_ps(va, vb);  // a0 b0 a1 b1 | a4 b4 a5 b5
    __m256 hi = _mm256_unpackhi_ps(va, vb);  // a2 b2 a3 b3 | a6 b6 a7 b7
    store8<kStream>(out + 2 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
    store8<kStream>(out + 2 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  interleave2_baseline(a + i, b + i, s, out + 2 * i, w - i);
}

template <bool kStream>
__attribute__((target("avx2"))) double deinterleave2_avx2(const float* g, const float* a, const float* b,
                                                          float s, float* ga, float* gb, int64_t w) {
  const __m256 vs = _mm256_set1_ps(s), zero = _mm256_setzero_ps();
  __m256 acc = zero;
  int64_t i = 0;
  for (; i + 8 <= w; i += 8) {
    __m256 g_lo = _mm256_loadu_ps(g + 2 * i), g_hi = _mm256_loadu_ps(g + 2 * i + 8);
    // even/odd elements, per 128-bit lane: (lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6); then fix the lane order
    __m256 even = _mm256_shuffle_ps(g_lo, g_hi, _MM_SHUFFLE(2, 0, 2, 0));
    __m256 odd = _mm256_shuffle_ps(g_lo, g_hi, _MM_SHUFFLE(3, 1, 3, 1));
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0)));
    __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
    __m256 pos_a = _mm256_cmp_ps(va, zero, _CMP_GT_OQ), pos_b = _mm256_cmp_ps(vb, zero, _CMP_GT_OQ);
    store8<kStream>(ga + i, _mm256_blendv_ps(_mm256_mul_ps(even, vs), even, pos_a));
    store8<kStream>(gb + i, _mm256_blendv_ps(_mm256_mul_ps(odd, vs), odd, pos_b));
    acc = _mm256_add_ps(acc, _mm256_blendv_ps(_mm256_mul_ps(va, even), zero, pos_a));
    acc = _mm256_add_ps(acc, _mm256_blendv_ps(_mm256_mul_ps(vb, odd), zero, pos_b));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  double total = 0.0;
  for (float v : lanes) total += v;
  return total + deinterleave2_baseline(g + 2 * i, a + i, b + i, s, ga + i, gb + i, w - i);
}

#endif

// True when [p, p + count) is whole 64-byte cache lines.
bool whole_lines(const float* p, int64_t count) {
  return reinterpret_cast<uintptr_t>(p) % 64 == 0 && count % 16 == 0;
}

void interleave2(bool avx2, bool stream, const float* a, const float* b, float s, float* out, int64_t w) {
#if IAFSR_X86
  if (avx2 && stream && whole_lines(out, 2 * w)) return interleave2_avx2<true>(a, b, s, out, w);
  if (avx2) return interleave2_avx2<false>(a, b, s, out, w);
#endif
  interleave2_baseline(a, b, s, out, w);
}

double deinterleave2(bool avx2, bool stream, const float* g, const float* a, const float* b, float s, float* ga,
                     float* gb, int64_t w) {
#if IAFSR_X86
  if (avx2 && stream && whole_lines(ga, w) && whole_lines(gb, w)) return deinterleave2_avx2<true>(g, a, b, s, ga, gb, w);
  if (avx2) return deinterleave2_avx2<false>(g, a, b, s, ga, gb, w);
#endif
  return deinterleave2_baseline(g, a, b, s, ga, gb, w);
}

// Makes a thread's non-temporal stores globally visible before it reports its work done.
void end_streaming(bool stream) {
#if IAFSR_X86
  if (stream) _mm_sfence();
#endif
  (void)stream;
}

// Arrays written with non-temporal stores above this size (about twice this machine's L2 caches together).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

}  // namespace

void pixel_shuffle_prelu(const float* x, const float* slope, bool slope_per_channel, float* out, int64_t n,
                         int64_t channels_out, int64_t h, int64_t w, int64_t r) {
  const bool avx2 = active_simd() != Simd::baseline;
  const bool stream = n * channels_out * h * w * r * r * int64_t(sizeof(float)) > kStreamBytes;
  const int64_t plane = h * w;  // one input channel
  const int64_t out_row = w * r;
  // One unit = input row h of output channel c of image b: writes r output rows.
  const int64_t units = n * channels_out * h;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, r * r * w));
  parallel_for(units, grain, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t row = unit % h, image_channel = unit / h;  // image_channel = b * channels_out + c
      const int64_t c = image_channel % channels_out;
      const float s = slope[slope_per_channel ? c : 0];
      const float* src = x + image_channel * r * r * plane + row * w;
      float* dst = out + (image_channel * h + row) * r * out_row;
      for (int64_t i = 0; i < r; ++i, dst += out_row) {
        if (r == 2) {
          const float* a = src + (2 * i) * plane;
          interleave2(avx2, stream, a, a + plane, s, dst, w);
          continue;
        }
        for (int64_t j = 0; j < r; ++j) {
          const float* in = src + (i * r + j) * plane;
          for (int64_t col = 0; col < w; ++col) dst[col * r + j] = prelu(in[col], s);
        }
      }
    }
    end_streaming(stream);
  });
}

void pixel_shuffle_prelu_backward(const float* grad_out, const float* x, const float* slope,
                                  bool slope_per_channel, float* grad_x, float* grad_slope, int64_t n,
                                  int64_t channels_out, int64_t h, int64_t w, int64_t r) {
  const bool avx2 = active_simd() != Simd::baseline;
  const bool stream = n * channels_out * h * w * r * r * int64_t(sizeof(float)) > kStreamBytes;
  const int64_t plane = h * w;
  const int64_t out_row = w * r;
  // Units are whole (image, output channel) planes so that each partial sum of the slope gradient has
  // one writer; partials are then added in a fixed order, whatever the thread count.
  const int64_t planes = n * channels_out;
  std::vector<double> partial(static_cast<size_t>(planes), 0.0);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, r * r * plane));
  parallel_for(planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t image_channel = begin; image_channel < end; ++image_channel) {
      const int64_t c = image_channel % channels_out;
      const float s = slope[slope_per_channel ? c : 0];
      double sum = 0.0;
      for (int64_t row = 0; row < h; ++row) {
        const int64_t in_offset = image_channel * r * r * plane + row * w;
        const float* g = grad_out + (image_channel * h + row) * r * out_row;
        for (int64_t i = 0; i < r; ++i, g += out_row) {
          if (r == 2) {
            const int64_t a = in_offset + (2 * i) * plane;
            sum += deinterleave2(avx2, stream, g, x + a, x + a + plane, s, grad_x + a, grad_x + a + plane, w);
            continue;
          }
          for (int64_t j = 0; j < r; ++j) {
            const int64_t offset = in_offset + (i * r + j) * plane;
            float acc = 0.f;
            for (int64_t col = 0; col < w; ++col) {
              const float v = x[offset + col], gv = g[col * r + j];
              grad_x[offset + col] = v > 0.f ? gv : gv * s;
              acc += v > 0.f ? 0.f : v * gv;
            }
            sum += acc;
          }
        }
      }
      partial[static_cast<size_t>(image_channel)] = sum;
    }
    end_streaming(stream);
  });
  if (slope_per_channel) {
    for (int64_t c = 0; c < channels_out; ++c) {
      double total = 0.0;
      for (int64_t b = 0; b < n; ++b) total += partial[static_cast<size_t>(b * channels_out + c)];
      grad_slope[c] = static_cast<float>(total);
    }
  } else {
    double total = 0.0;
    for (double p : partial) total += p;
    grad_slope[0] = static_cast<float>(total);
  }
}

}  // namespace cpu
}  // namespace iafsr
