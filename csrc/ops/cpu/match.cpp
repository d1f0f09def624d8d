// Top-k gallery rows by cosine for each probe, without a (probes x gallery) score matrix: gallery rows are
// normalized and packed once; each task packs a block of probes, scores it against the gallery panel by
// panel with the tile kernel, and keeps a sorted top-k list per probe. A tile row is looked at only when
// the kernel reports a score at or above that probe's current k-th score.
// Order: higher score first; equal scores by lower gallery index (the gallery is scanned in index order
// and only a strictly better candidate displaces a kept one); NaN scores rank as -inf.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common.h"
#include "cpu_kernels.h"
#include "score_kernel.h"

namespace iafsr {
namespace cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kEmpty = std::numeric_limits<int64_t>::max();  // index of a slot not filled yet

inline float rank_key(float score) { return std::isnan(score) ? -kInf : score; }

// One probe's best k so far, best first; unfilled slots hold (-inf, kEmpty).
struct TopK {
  float* scores;
  int64_t* indices;
  int64_t k;

  // Returns the rank key of the k-th entry: a score must reach it to be offered again.
  float offer(float score, int64_t index) {
    const float key = rank_key(score);
    auto worse_than_candidate = [&](int64_t slot) {
      const float slot_key = rank_key(scores[slot]);
      return key > slot_key || (key == slot_key && index < indices[slot]);
    };
    if (worse_than_candidate(k - 1)) {
      int64_t pos = k - 1;
      for (; pos > 0 && worse_than_candidate(pos - 1); --pos) {
        scores[pos] = scores[pos - 1];
        indices[pos] = indices[pos - 1];
      }
      scores[pos] = score;
      indices[pos] = index;
    }
    return rank_key(scores[k - 1]);
  }
};

}  // namespace

void match(const float* probes, const float* gallery, int64_t k, int64_t* indices, float* scores,
           int64_t rows_p, int64_t rows_g, int64_t dim) {
  const TileKernel kernel = tile_kernel();
  const int64_t g_panels = ceil_div(rows_g, kernel.cols);
  AlignedFloats packed_g(g_panels * kernel.cols * dim);
  parallel_for(g_panels, 64, [&](int64_t begin, int64_t end) {
    const int64_t last = std::min(end * kernel.cols, rows_g);
    pack_unit_rows(gallery + begin * kernel.cols * dim, last - begin * kernel.cols, dim, kernel.cols,
                   packed_g.get() + begin * kernel.cols * dim);
  });

  const int64_t block_rows = kTileRows * 16;
  parallel_for(ceil_div(rows_p, block_rows), 1, [&](int64_t first_block, int64_t end_block) {
    AlignedFloats packed_p(block_rows * dim);
    std::vector<float> thresholds(static_cast<size_t>(block_rows));
    alignas(64) float tile[kTileRows * kMaxTileCols];
    for (int64_t block = first_block; block < end_block; ++block) {
      const int64_t row0 = block * block_rows;
      const int64_t rows = std::min(block_rows, rows_p - row0);
      pack_unit_rows(probes + row0 * dim, rows, dim, kTileRows, packed_p.get());
      // Results are kept in place in the outputs. Padding rows get a +inf threshold, so the kernel flags
      // them only for NaN scores, and those are skipped below.
      std::fill(scores + row0 * k, scores + (row0 + rows) * k, -kInf);
      std::fill(indices + row0 * k, indices + (row0 + rows) * k, kEmpty);
      std::fill(thresholds.begin(), thresholds.end(), kInf);
      std::fill(thresholds.begin(), thresholds.begin() + rows, -kInf);
      for (int64_t panel = 0; panel < g_panels; ++panel) {
        const int64_t col0 = panel * kernel.cols;
        const int64_t cols = std::min<int64_t>(kernel.cols, rows_g - col0);
        for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
          uint32_t hits = kernel.run(packed_p.get() + r0 * dim, packed_g.get() + col0 * dim, dim,
                                     thresholds.data() + r0, tile);
          while (hits) {
            const int r = __builtin_ctz(hits);
            hits &= hits - 1;
            if (r0 + r >= rows) continue;  // padding row (flagged only by a NaN gallery score)
            const int64_t row = row0 + r0 + r;
            TopK best{scores + row * k, indices + row * k, k};
            float& threshold = thresholds[static_cast<size_t>(r0 + r)];
            const float* tile_row = tile + r * kernel.cols;
            for (int64_t c = 0; c < cols; ++c)
              if (!(tile_row[c] < threshold)) threshold = best.offer(tile_row[c], col0 + c);
          }
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace iafsr
