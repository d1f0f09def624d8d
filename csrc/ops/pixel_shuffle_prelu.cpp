#include <string>

#include "cpu/cpu_kernels.h"
#include "dispatch.h"
#include "ops.h"

namespace iafsr {
namespace {

struct Geometry {
  int64_t n, channels_out, h, w;
  bool slope_per_channel;
};

// Checks x, slope and r; returns the sizes of the shuffle.
Geometry check_shuffle(const char* op, const Buffer& x, const Buffer& slope, int64_t r) {
  check_rank(op, "x", x, 4, "NCHW");
  check_float(op, "x", x);
  check_input_layout(op, "x", x);
  if (r < 1 || r > (1 << 20)) fail(std::string(op) + ": expected an upscale factor r >= 1, got " + std::to_string(r));
  const int64_t channels = x.dim(1);
  if (channels % (r * r) != 0)
    fail(std::string(op) + ": expected the channel count of x to be divisible by r*r = " + std::to_string(r * r) +
         ", got " + std::to_string(channels) + " channels (x has shape " + shape_text(x.shape) + ")");
  const int64_t channels_out = channels / (r * r);
  check_rank(op, "slope", slope, 1, "(channels,)");
  if (slope.dim(0) != channels_out && slope.dim(0) != 1)
    fail(std::string(op) + ": expected slope to have shape (" + std::to_string(channels_out) +
         ",) (one per output channel) or (1,), got " + shape_text(slope.shape));
  check_same_dtype(op, {"x", &x}, {"slope", &slope});
  check_input_layout(op, "slope", slope);
  return {x.dim(0), channels_out, x.dim(2), x.dim(3), slope.dim(0) == channels_out};
}

}  // namespace

void pixel_shuffle_prelu(const Buffer& x, const Buffer& slope, int64_t r, const Buffer& out, intptr_t stream) {
  const char* op = "pixel_shuffle_prelu";
  const Geometry g = check_shuffle(op, x, slope, r);
  check_same_device(op, {{"x", &x}, {"slope", &slope}, {"out", &out}});
  check_output(op, "out", out, {g.n, g.channels_out, g.h * r, g.w * r}, x.dtype);
  check_no_overlap(op, {{"out", &out}}, {{"x", &x}, {"slope", &slope}});
  if (out.numel() == 0) return;
  if (on_host(x)) {
    cpu::pixel_shuffle_prelu(f32(x), f32(slope), g.slope_per_channel, f32_out(out), g.n, g.channels_out, g.h, g.w, r);
    return;
  }
  run_on_cuda(op, {{"x", &x}, {"slope", &slope}, {"out", &out}}, stream, [&] {
#ifdef WITH_CUDA
    cuda::pixel_shuffle_prelu(x.dtype, x.data, slope.data, g.slope_per_channel, out.data, g.n, g.channels_out, g.h,
                              g.w, r, stream);
#endif
  });
}

void pixel_shuffle_prelu_backward(const Buffer& grad_out, const Buffer& x, const Buffer& slope, int64_t r,
                                  const Buffer& grad_x, const Buffer& grad_slope, intptr_t stream) {
  const char* op = "pixel_shuffle_prelu_backward";
  const Geometry g = check_shuffle(op, x, slope, r);
  check_rank(op, "grad_out", grad_out, 4, "NCHW");
  const std::vector<int64_t> out_shape{g.n, g.channels_out, g.h * r, g.w * r};
  if (grad_out.shape != out_shape)
    fail(std::string(op) + ": expected grad_out to have the output shape " + shape_text(out_shape) + ", got " +
         shape_text(grad_out.shape));
  check_same_dtype(op, {"x", &x}, {"grad_out", &grad_out});
  check_input_layout(op, "grad_out", grad_out);
  check_same_device(op, {{"x", &x}, {"slope", &slope}, {"grad_out", &grad_out}, {"grad_x", &grad_x},
                         {"grad_slope", &grad_slope}});
  check_output(op, "grad_x", grad_x, x.shape, x.dtype);
  check_output(op, "grad_slope", grad_slope, slope.shape, slope.dtype);
  check_no_overlap(op, {{"grad_x", &grad_x}, {"grad_slope", &grad_slope}},
                   {{"grad_out", &grad_out}, {"x", &x}, {"slope", &slope}});
  if (grad_slope.numel() == 0 && grad_x.numel() == 0) return;
  if (on_host(x)) {
    if (grad_x.numel() == 0) {
      for (int64_t i = 0; i < grad_slope.numel(); ++i) f32_out(grad_slope)[i] = 0.f;
      return;
    }
    cpu::pixel_shuffle_prelu_backward(f32(grad_out), f32(x), f32(slope), g.slope_per_channel, f32_out(grad_x),
                                      f32_out(grad_slope), g.n, g.channels_out, g.h, g.w, r);
    return;
  }
  run_on_cuda(op, {{"x", &x}, {"slope", &slope}, {"grad_out", &grad_out}, {"grad_x", &grad_x}, {"grad_slope", &grad_slope}},
              stream, [&] {
#ifdef WITH_CUDA
                if (grad_x.numel() == 0) {
                  cuda::zero(grad_slope.data, grad_slope.nbytes(), stream);
                  return;
                }
                cuda::pixel_shuffle_prelu_backward(x.dtype, grad_out.data, x.data, slope.data, g.slope_per_channel,
                                                   grad_x.data, grad_slope.data, g.n, g.channels_out, g.h, g.w, r,
                                                   stream);
#endif
              });
}

}  // namespace iafsr
