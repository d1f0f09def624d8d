#include <cmath>

#include "../../common.h"
#include "cpu_kernels.h"
#include "rows.h"

namespace iafsr {
namespace cpu {

void l2_norm(const float* x, float* out, int64_t rows, int64_t dim) {
  parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<float>(std::sqrt(sum_squares(x + i * dim, dim)));
  });
}

// out = x / max(||x||, eps), as torch.nn.functional.normalize; a NaN norm stays NaN.
void l2_normalize(const float* x, double eps, float* out, int64_t rows, int64_t dim) {
  parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* row = x + i * dim;
      const double norm = std::sqrt(sum_squares(row, dim));
      const double scale = 1.0 / (norm < eps ? eps : norm);
      for (int64_t j = 0; j < dim; ++j) out[i * dim + j] = static_cast<float>(row[j] * scale);
    }
  });
}

}  // namespace cpu
}  // namespace iafsr
