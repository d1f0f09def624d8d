#include <string>

#include "cpu/cpu_kernels.h"
#include "dispatch.h"
#include "ops.h"

namespace iafsr {

void cosine_similarity(const Buffer& a, const Buffer& b, const Buffer& out, intptr_t stream) {
  const char* op = "cosine_similarity";
  check_rows(op, "a", a);
  check_rows(op, "b", b);
  check_same_shape(op, {"a", &a}, {"b", &b});
  check_same_dtype(op, {"a", &a}, {"b", &b});
  check_same_device(op, {{"a", &a}, {"b", &b}, {"out", &out}});
  check_output(op, "out", out, {a.dim(0)}, DType::float32);
  check_no_overlap(op, {{"out", &out}}, {{"a", &a}, {"b", &b}});
  if (out.numel() == 0) return;
  if (on_host(a)) return cpu::cosine_similarity(f32(a), f32(b), f32_out(out), a.dim(0), a.dim(1));
  run_on_cuda(op, {{"a", &a}, {"b", &b}, {"out", &out}}, stream, [&] {
#ifdef WITH_CUDA
    cuda::cosine_similarity(a.dtype, a.data, b.data, f32_out(out), a.dim(0), a.dim(1), stream);
#endif
  });
}

void cosine_matrix(const Buffer& a, const Buffer& b, const Buffer& out, intptr_t stream) {
  const char* op = "cosine_matrix";
  check_rows(op, "a", a);
  check_rows(op, "b", b);
  if (a.dim(1) != b.dim(1))
    fail(std::string(op) + ": a and b must have the same number of features, got shapes " + shape_text(a.shape) +
         " and " + shape_text(b.shape));
  check_same_dtype(op, {"a", &a}, {"b", &b});
  check_same_device(op, {{"a", &a}, {"b", &b}, {"out", &out}});
  check_output(op, "out", out, {a.dim(0), b.dim(0)}, DType::float32);
  check_no_overlap(op, {{"out", &out}}, {{"a", &a}, {"b", &b}});
  if (out.numel() == 0) return;
  if (on_host(a)) return cpu::cosine_matrix(f32(a), f32(b), f32_out(out), a.dim(0), b.dim(0), a.dim(1));
  run_on_cuda(op, {{"a", &a}, {"b", &b}, {"out", &out}}, stream, [&] {
#ifdef WITH_CUDA
    cuda::cosine_matrix(a.dtype, a.data, b.data, f32_out(out), a.dim(0), b.dim(0), a.dim(1), stream);
#endif
  });
}

}  // namespace iafsr
