// CPU kernels (float32). Arguments are already validated by the dispatch layer; sizes are non-zero.
#pragma once

#include <cstdint>
#include <string>

namespace iafsr {
namespace cpu {

void pixel_shuffle_prelu(const float* x, const float* slope, bool slope_per_channel, float* out, int64_t n,
                         int64_t channels_out, int64_t h, int64_t w, int64_t r);
void pixel_shuffle_prelu_backward(const float* grad_out, const float* x, const float* slope,
                                  bool slope_per_channel, float* grad_x, float* grad_slope, int64_t n,
                                  int64_t channels_out, int64_t h, int64_t w, int64_t r);

void l2_norm(const float* x, float* out, int64_t rows, int64_t dim);
void l2_normalize(const float* x, double eps, float* out, int64_t rows, int64_t dim);
void cosine_similarity(const float* a, const float* b, float* out, int64_t rows, int64_t dim);
void cosine_matrix(const float* a, const float* b, float* out, int64_t rows_a, int64_t rows_b, int64_t dim);
void identity_loss(const float* f_sr, const float* f_hr, float* cos_loss, float* mag_loss, float* grad_cos,
                   float* grad_mag, int64_t rows, int64_t dim);
void match(const float* probes, const float* gallery, int64_t k, int64_t* indices, float* scores,
           int64_t rows_p, int64_t rows_g, int64_t dim);

// Instruction set used by the score micro-kernel: "avx512", "avx2" or "baseline" (portable 4-wide vectors).
std::string simd_level();
// Forces a level for tests ("auto" resets to the best this CPU supports); returns the level in use.
// Unknown names or levels this CPU lacks raise std::invalid_argument.
std::string set_simd_level(const std::string& level);

}  // namespace cpu
}  // namespace iafsr
