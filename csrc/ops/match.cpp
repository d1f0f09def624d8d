#include <string>

#include "cpu/cpu_kernels.h"
#include "dispatch.h"
#include "ops.h"

namespace iafsr {

void match(const Buffer& probes, const Buffer& gallery, int64_t k, const Buffer& indices, const Buffer& scores,
           intptr_t stream) {
  const char* op = "match";
  check_rows(op, "probes", probes);
  check_rows(op, "gallery", gallery);
  if (probes.dim(1) != gallery.dim(1))
    fail(std::string(op) + ": probes and gallery must have the same number of features, got shapes " +
         shape_text(probes.shape) + " and " + shape_text(gallery.shape));
  check_same_dtype(op, {"probes", &probes}, {"gallery", &gallery});
  if (k < 1) fail(std::string(op) + ": expected k >= 1, got k = " + std::to_string(k));
  if (k > gallery.dim(0))
    fail(std::string(op) + ": k = " + std::to_string(k) + " exceeds the gallery size (" +
         std::to_string(gallery.dim(0)) + " rows)");
  check_same_device(op, {{"probes", &probes}, {"gallery", &gallery}, {"indices", &indices}, {"scores", &scores}});
  if (!on_host(probes)) {
    if (k > kCudaMatchMaxK)
      fail(std::string(op) + ": k = " + std::to_string(k) + " exceeds the largest k of the CUDA kernel (" +
           std::to_string(kCudaMatchMaxK) + ")");
    if (gallery.dim(0) >= (int64_t(1) << 32) - 1)
      fail(std::string(op) + ": the CUDA kernel takes fewer than 2**32 - 1 gallery rows, got " +
           std::to_string(gallery.dim(0)));
  }
  check_output(op, "indices", indices, {probes.dim(0), k}, DType::int64);
  check_output(op, "scores", scores, {probes.dim(0), k}, DType::float32);
  check_no_overlap(op, {{"indices", &indices}, {"scores", &scores}}, {{"probes", &probes}, {"gallery", &gallery}});
  if (scores.numel() == 0) return;
  int64_t* index_out = static_cast<int64_t*>(indices.data);
  if (on_host(probes))
    return cpu::match(f32(probes), f32(gallery), k, index_out, f32_out(scores), probes.dim(0), gallery.dim(0),
                      probes.dim(1));
  run_on_cuda(op, {{"probes", &probes}, {"gallery", &gallery}, {"indices", &indices}, {"scores", &scores}}, stream,
              [&] {
#ifdef WITH_CUDA
                cuda::match(probes.dtype, probes.data, gallery.data, k, index_out, f32_out(scores), probes.dim(0),
                            gallery.dim(0), probes.dim(1), stream);
#endif
              });
}

}  // namespace iafsr
