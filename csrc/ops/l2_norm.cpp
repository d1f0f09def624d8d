#include <cmath>
#include <string>

#include "cpu/cpu_kernels.h"
#include "dispatch.h"
#include "ops.h"

namespace iafsr {

void l2_norm(const Buffer& x, const Buffer& out, intptr_t stream) {
  const char* op = "l2_norm";
  check_rows(op, "x", x);
  check_same_device(op, {{"x", &x}, {"out", &out}});
  check_output(op, "out", out, {x.dim(0)}, DType::float32);
  check_no_overlap(op, {{"out", &out}}, {{"x", &x}});
  if (out.numel() == 0) return;
  if (on_host(x)) return cpu::l2_norm(f32(x), f32_out(out), x.dim(0), x.dim(1));
  run_on_cuda(op, {{"x", &x}, {"out", &out}}, stream, [&] {
#ifdef WITH_CUDA
    cuda::l2_norm(x.dtype, x.data, f32_out(out), x.dim(0), x.dim(1), stream);
#endif
  });
}

void l2_normalize(const Buffer& x, double eps, const Buffer& out, intptr_t stream) {
  const char* op = "l2_normalize";
  check_rows(op, "x", x);
  if (!(eps >= 0) || std::isinf(eps))
    fail(std::string(op) + ": expected a finite eps >= 0, got " + std::to_string(eps));
  check_same_device(op, {{"x", &x}, {"out", &out}});
  check_output(op, "out", out, x.shape, x.dtype);
  check_no_overlap(op, {{"out", &out}}, {{"x", &x}});
  if (out.numel() == 0) return;
  if (on_host(x)) return cpu::l2_normalize(f32(x), eps, f32_out(out), x.dim(0), x.dim(1));
  run_on_cuda(op, {{"x", &x}, {"out", &out}}, stream, [&] {
#ifdef WITH_CUDA
    cuda::l2_normalize(x.dtype, x.data, eps, out.data, x.dim(0), x.dim(1), stream);
#endif
  });
}

}  // namespace iafsr
