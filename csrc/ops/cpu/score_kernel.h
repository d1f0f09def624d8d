// Cache-blocked scores of unit-normalized rows (SGEMM-like): a register-blocked micro-kernel computes a
// tile of kRows probe rows x `cols` gallery rows, each a dot product over the whole feature dimension.
// Shared by cosine_matrix and match.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace iafsr {
namespace cpu {

constexpr int kTileRows = 6;
constexpr int kMaxTileCols = 32;

// tile[r * cols + c] = dot(a row r, b row c). Returns a bit mask of the rows r with a score that is not
// below thresholds[r] (NaN counts as not below); 0 when thresholds is null.
using TileFn = uint32_t (*)(const float* a_panel, const float* b_panel, int64_t dim, const float* thresholds,
                            float* tile);

struct TileKernel {
  int cols;  // gallery rows per tile: 16 (baseline, AVX2) or 32 (AVX-512)
  TileFn run;
};

// The kernel for the active SIMD level (see simd.h).
TileKernel tile_kernel();

// Packs rows [0, rows) of the row-major (rows, dim) array x, each divided by its L2 norm (zero rows stay
// zero, NaN propagates), into panels of `panel_rows` rows: element (d, i) of panel p is at
// packed[p * panel_rows * dim + d * panel_rows + i]. Rows from `rows` up to the panel boundary are zero.
void pack_unit_rows(const float* x, int64_t rows, int64_t dim, int panel_rows, float* packed);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 64-byte aligned float storage.
class AlignedFloats {
 public:
  explicit AlignedFloats(int64_t count) {
    size_t bytes = (static_cast<size_t>(count > 0 ? count : 1) * sizeof(float) + 63) / 64 * 64;
    data_.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!data_) throw std::bad_alloc();
  }
  float* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
};

}  // namespace cpu
}  // namespace iafsr
