// Identity loss of the paper, per row i (a = f_sr[i], b = f_hr[i]):
//   cos_loss = 1 - cos(a, b)          (eq. 1)     grad_cos = -(b / (|a||b|) - cos * a / |a|^2)
//   mag_loss = | |a| - |b| |          (eq. 2)     grad_mag = sign(|a| - |b|) * a / |a|
// Zero-norm rows: cos = 0 (cos_loss = 1) and grad_cos = 0 when |a| or |b| is 0; grad_mag = 0 when |a| is 0
// or |a| = |b| (the subgradient torch picks for abs and norm at 0). NaN or Inf in a row make that row's
// results NaN (or Inf), never a finite stand-in.
#include <cmath>

#include "../../common.h"
#include "cpu_kernels.h"
#include "rows.h"

namespace iafsr {
namespace cpu {

void identity_loss(const float* f_sr, const float* f_hr, float* cos_loss, float* mag_loss, float* grad_cos,
                   float* grad_mag, int64_t rows, int64_t dim) {
  parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* a = f_sr + i * dim;
      const float* b = f_hr + i * dim;
      const double norm_a = std::sqrt(sum_squares(a, dim));
      const double norm_b = std::sqrt(sum_squares(b, dim));
      const bool zero = norm_a == 0 || norm_b == 0;
      const double cos = zero ? 0.0 : dot(a, b, dim) / (norm_a * norm_b);
      const double gap = norm_a - norm_b;
      cos_loss[i] = static_cast<float>(1.0 - cos);
      mag_loss[i] = static_cast<float>(std::fabs(gap));
      const double cos_b = zero ? 0.0 : 1.0 / (norm_a * norm_b);
      const double cos_a = zero ? 0.0 : cos / (norm_a * norm_a);
      const double sign = gap > 0 ? 1.0 : gap < 0 ? -1.0 : gap == 0 ? 0.0 : gap;  // NaN stays NaN
      const double mag_a = norm_a == 0 ? 0.0 : sign / norm_a;
      for (int64_t j = 0; j < dim; ++j) {
        grad_cos[i * dim + j] = static_cast<float>(cos_a * a[j] - cos_b * b[j]);
        grad_mag[i * dim + j] = static_cast<float>(mag_a * a[j]);
      }
    }
  });
}

}  // namespace cpu
}  // namespace iafsr
