// The single dispatch point of each op: validates every argument, returns early on empty input, then
// runs the CPU or the CUDA kernel. Outputs are allocated by the caller and passed in.
// `stream` is the caller's cudaStream_t as an integer (0: the legacy default stream); ignored on the host.
#pragma once

#include "../common.h"

namespace iafsr {

// y = PReLU(PixelShuffle(x, r), slope). x: (N, C*r*r, H, W); slope: (C,) or (1,); out: (N, C, H*r, W*r).
void pixel_shuffle_prelu(const Buffer& x, const Buffer& slope, int64_t r, const Buffer& out, intptr_t stream);
// grad_x: like x; grad_slope: like slope.
void pixel_shuffle_prelu_backward(const Buffer& grad_out, const Buffer& x, const Buffer& slope, int64_t r,
                                  const Buffer& grad_x, const Buffer& grad_slope, intptr_t stream);

// Rows of a 2-D (rows, features) array. out: (rows,) float32.
void l2_norm(const Buffer& x, const Buffer& out, intptr_t stream);
// out = x / max(||x||, eps), like x.
void l2_normalize(const Buffer& x, double eps, const Buffer& out, intptr_t stream);

// Row pairs: out (rows,) float32. Matrix: out (rows_a, rows_b) float32. Zero-norm rows give 0.
void cosine_similarity(const Buffer& a, const Buffer& b, const Buffer& out, intptr_t stream);
void cosine_matrix(const Buffer& a, const Buffer& b, const Buffer& out, intptr_t stream);

// Per row: cos_loss = 1 - cos(f_sr, f_hr), mag_loss = | ||f_sr|| - ||f_hr|| |  (float32, (rows,)),
// grad_cos / grad_mag = their gradients with respect to that row of f_sr (like f_sr).
void identity_loss(const Buffer& f_sr, const Buffer& f_hr, const Buffer& cos_loss, const Buffer& mag_loss,
                   const Buffer& grad_cos, const Buffer& grad_mag, intptr_t stream);

// Top-k gallery rows by cosine for each probe: indices (N, k) int64, scores (N, k) float32,
// best first, ties to the lower gallery index, NaN scores ranked as -inf.
void match(const Buffer& probes, const Buffer& gallery, int64_t k, const Buffer& indices, const Buffer& scores,
           intptr_t stream);

// Largest k the CUDA match kernel takes.
constexpr int64_t kCudaMatchMaxK = 1024;

}  // namespace iafsr
