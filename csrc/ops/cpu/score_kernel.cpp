#include "score_kernel.h"

#include <cmath>

#include "rows.h"
#include "simd.h"

namespace iafsr {
namespace cpu {
namespace {

constexpr int R = kTileRows;

// Portable version with 4-wide GCC/Clang vector types (SSE2 on the x86-64 baseline, NEON on Arm). Each
// half of the tile (6 x 8 accumulators, 12 vectors) fits the 16 baseline vector registers.
typedef float float4v __attribute__((vector_size(16)));

uint32_t tile_baseline(const float* a, const float* b, int64_t dim, const float* thresholds, float* tile) {
  constexpr int C = 16;
  uint32_t hits = 0;
  for (int half = 0; half < C; half += 8) {
    float4v acc[R][2] = {};
    for (int64_t d = 0; d < dim; ++d) {
      float4v b0, b1;
      __builtin_memcpy(&b0, b + d * C + half, sizeof b0);
      __builtin_memcpy(&b1, b + d * C + half + 4, sizeof b1);
      for (int r = 0; r < R; ++r) {
        const float ar = a[d * R + r];
        const float4v x = {ar, ar, ar, ar};
        acc[r][0] += x * b0;
        acc[r][1] += x * b1;
      }
    }
    for (int r = 0; r < R; ++r) {
      __builtin_memcpy(tile + r * C + half, &acc[r][0], sizeof acc[r][0]);
      __builtin_memcpy(tile + r * C + half + 4, &acc[r][1], sizeof acc[r][1]);
      if (!thresholds) continue;
      bool hit = false;
      for (int c = 0; c < 8; ++c) hit |= !(tile[r * C + half + c] < thresholds[r]);
      hits |= static_cast<uint32_t>(hit) << r;
    }
  }
  return hits;
}

#if IAFSR_X86
// 6 x 16 tile: 12 ymm accumulators, 2 loads of b and 6 broadcasts of a per step of d.
__attribute__((target("avx2,fma"))) uint32_t tile_avx2(const float* a, const float* b, int64_t dim,
                                                       const float* thresholds, float* tile) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t d = 0; d < dim; ++d, a += R, b += 16) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  const __m256 rows[R][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  uint32_t hits = 0;
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(tile + r * 16, rows[r][0]);
    _mm256_storeu_ps(tile + r * 16 + 8, rows[r][1]);
    if (thresholds) {
      const __m256 t = _mm256_set1_ps(thresholds[r]);
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(rows[r][0], t, _CMP_NLT_UQ)) |
                       _mm256_movemask_ps(_mm256_cmp_ps(rows[r][1], t, _CMP_NLT_UQ));
      hits |= static_cast<uint32_t>(mask != 0) << r;
    }
  }
  return hits;
}

// 6 x 32 tile: 12 zmm accumulators.
__attribute__((target("avx512f,avx2,fma"))) uint32_t tile_avx512(const float* a, const float* b, int64_t dim,
                                                                 const float* thresholds, float* tile) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t d = 0; d < dim; ++d, a += R, b += 32) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    __m512 x = _mm512_set1_ps(a[0]);
    c00 = _mm512_fmadd_ps(x, b0, c00), c01 = _mm512_fmadd_ps(x, b1, c01);
    x = _mm512_set1_ps(a[1]);
    c10 = _mm512_fmadd_ps(x, b0, c10), c11 = _mm512_fmadd_ps(x, b1, c11);
    x = _mm512_set1_ps(a[2]);
    c20 = _mm512_fmadd_ps(x, b0, c20), c21 = _mm512_fmadd_ps(x, b1, c21);
    x = _mm512_set1_ps(a[3]);
    c30 = _mm512_fmadd_ps(x, b0, c30), c31 = _mm512_fmadd_ps(x, b1, c31);
    x = _mm512_set1_ps(a[4]);
    c40 = _mm512_fmadd_ps(x, b0, c40), c41 = _mm512_fmadd_ps(x, b1, c41);
    x = _mm512_set1_ps(a[5]);
    c50 = _mm512_fmadd_ps(x, b0, c50), c51 = _mm512_fmadd_ps(x, b1, c51);
  }
  const __m512 rows[R][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  uint32_t hits = 0;
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(tile + r * 32, rows[r][0]);
    _mm512_storeu_ps(tile + r * 32 + 16, rows[r][1]);
    if (thresholds) {
      const __m512 t = _mm512_set1_ps(thresholds[r]);
      const __mmask16 mask = _mm512_cmp_ps_mask(rows[r][0], t, _CMP_NLT_UQ) |
                             _mm512_cmp_ps_mask(rows[r][1], t, _CMP_NLT_UQ);
      hits |= static_cast<uint32_t>(mask != 0) << r;
    }
  }
  return hits;
}
#endif

}  // namespace

TileKernel tile_kernel() {
#if IAFSR_X86
  switch (active_simd()) {
    case Simd::avx512: return {32, tile_avx512};
    case Simd::avx2: return {16, tile_avx2};
    default: break;
  }
#endif
  return {16, tile_baseline};
}

void pack_unit_rows(const float* x, int64_t rows, int64_t dim, int panel_rows, float* packed) {
  const int64_t padded = ceil_div(rows, panel_rows) * panel_rows;
  for (int64_t i = 0; i < padded; ++i) {
    float* dst = packed + (i / panel_rows) * panel_rows * dim + i % panel_rows;
    if (i >= rows) {
      for (int64_t d = 0; d < dim; ++d) dst[d * panel_rows] = 0.f;
      continue;
    }
    const float* row = x + i * dim;
    const double norm = std::sqrt(sum_squares(row, dim));
    const double inv = norm == 0 ? 0.0 : 1.0 / norm;
    for (int64_t d = 0; d < dim; ++d) dst[d * panel_rows] = static_cast<float>(row[d] * inv);
  }
}

}  // namespace cpu
}  // namespace iafsr
