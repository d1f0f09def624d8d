#include <algorithm>
#include <cmath>

#include "../../common.h"
#include "cpu_kernels.h"
#include "rows.h"
#include "score_kernel.h"

namespace iafsr {
namespace cpu {

// cos = a.b / (|a||b|); 0 where either row has zero norm; NaN/Inf propagate.
void cosine_similarity(const float* a, const float* b, float* out, int64_t rows, int64_t dim) {
  parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* ra = a + i * dim;
      const float* rb = b + i * dim;
      const double norm_a = std::sqrt(sum_squares(ra, dim)), norm_b = std::sqrt(sum_squares(rb, dim));
      out[i] = norm_a == 0 || norm_b == 0 ? 0.f : static_cast<float>(dot(ra, rb, dim) / (norm_a * norm_b));
    }
  });
}

// out[i, j] = cos(a_i, b_j), from unit rows packed once for b and per block of rows for a.
void cosine_matrix(const float* a, const float* b, float* out, int64_t rows_a, int64_t rows_b, int64_t dim) {
  const TileKernel kernel = tile_kernel();
  const int64_t b_panels = ceil_div(rows_b, kernel.cols);
  AlignedFloats packed_b(b_panels * kernel.cols * dim);
  parallel_for(b_panels, 64, [&](int64_t begin, int64_t end) {
    const int64_t last = std::min(end * kernel.cols, rows_b);
    pack_unit_rows(b + begin * kernel.cols * dim, last - begin * kernel.cols, dim, kernel.cols,
                   packed_b.get() + begin * kernel.cols * dim);
  });
  const int64_t block_rows = kTileRows * 16;
  parallel_for(ceil_div(rows_a, block_rows), 1, [&](int64_t first_block, int64_t end_block) {
    AlignedFloats packed_a(block_rows * dim);
    alignas(64) float tile[kTileRows * kMaxTileCols];
    for (int64_t block = first_block; block < end_block; ++block) {
      const int64_t row0 = block * block_rows;
      const int64_t rows = std::min(block_rows, rows_a - row0);
      pack_unit_rows(a + row0 * dim, rows, dim, kTileRows, packed_a.get());
      for (int64_t panel = 0; panel < b_panels; ++panel) {
        const int64_t col0 = panel * kernel.cols;
        const int64_t cols = std::min<int64_t>(kernel.cols, rows_b - col0);
        for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
          kernel.run(packed_a.get() + r0 * dim, packed_b.get() + col0 * dim, dim, nullptr, tile);
          const int64_t tile_rows = std::min<int64_t>(kTileRows, rows - r0);
          for (int64_t r = 0; r < tile_rows; ++r)
            std::copy(tile + r * kernel.cols, tile + r * kernel.cols + cols, out + (row0 + r0 + r) * rows_b + col0);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace iafsr
