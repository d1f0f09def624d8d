// Helpers of the per-op dispatch files.
#pragma once

#include <initializer_list>
#include <string>

#include "../common.h"
#ifdef WITH_CUDA
#include "cuda/cuda_kernels.h"
#endif

namespace iafsr {

// Runs `launch` with the device of the arrays selected and after the producers' streams, if any.
template <class Launch>
void run_on_cuda(const char* op, std::initializer_list<NamedBuffer> buffers, intptr_t stream, Launch launch) {
#ifdef WITH_CUDA
  int device = -1;
  for (const NamedBuffer& nb : buffers)
    if (nb.second->device_index >= 0) device = nb.second->device_index;
  if (device < 0) return;  // every array is empty
  cuda::DeviceGuard guard(device);
  for (const NamedBuffer& nb : buffers)
    if (nb.second->producer_stream != 0 && nb.second->producer_stream != stream)
      cuda::wait_for_stream(nb.second->producer_stream, stream);
  launch();
#else
  (void)buffers, (void)stream, (void)launch;
  throw CudaUnavailable(std::string(op) +
                        ": this build of iafsr has no CUDA support (built with IAFSR_CUDA=0 or without nvcc)");
#endif
}

inline bool on_host(const Buffer& b) { return b.device == DeviceKind::cpu; }
inline const float* f32(const Buffer& b) { return static_cast<const float*>(b.data); }
inline float* f32_out(const Buffer& b) { return static_cast<float*>(b.data); }

// 2-D (rows, features) float input.
inline void check_rows(const char* op, const char* name, const Buffer& b) {
  check_rank(op, name, b, 2, "(rows, features)");
  check_float(op, name, b);
  check_input_layout(op, name, b);
}

inline void check_same_shape(const char* op, const NamedBuffer& a, const NamedBuffer& b) {
  if (a.second->shape != b.second->shape)
    fail(std::string(op) + ": " + a.first + " and " + b.first + " must have the same shape, got " +
         shape_text(a.second->shape) + " and " + shape_text(b.second->shape));
}

}  // namespace iafsr
