// Row reductions shared by the CPU kernels. Sums run in double: a float32 feature row cannot overflow
// (FLT_MAX^2 is far below DBL_MAX) and the result is rounded to float32 once.
#pragma once

#include <cstdint>

namespace iafsr {
namespace cpu {

inline double sum_squares(const float* x, int64_t dim) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= dim; i += 4) {
    s0 += double(x[i]) * x[i];
    s1 += double(x[i + 1]) * x[i + 1];
    s2 += double(x[i + 2]) * x[i + 2];
    s3 += double(x[i + 3]) * x[i + 3];
  }
  for (; i < dim; ++i) s0 += double(x[i]) * x[i];
  return (s0 + s1) + (s2 + s3);
}

inline double dot(const float* a, const float* b, int64_t dim) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= dim; i += 4) {
    s0 += double(a[i]) * b[i];
    s1 += double(a[i + 1]) * b[i + 1];
    s2 += double(a[i + 2]) * b[i + 2];
    s3 += double(a[i + 3]) * b[i + 3];
  }
  for (; i < dim; ++i) s0 += double(a[i]) * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Rows per parallel task for row-wise kernels of width `dim`: about 16 K elements.
inline int64_t row_grain(int64_t dim) { return 1 + 16384 / (dim + 1); }

}  // namespace cpu
}  // namespace iafsr
