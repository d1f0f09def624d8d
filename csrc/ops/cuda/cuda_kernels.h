// Host-side API of the CUDA code, callable from files compiled without CUDA headers. Every function
// launches on `stream` (a cudaStream_t as an integer), checks each launch and throws on failure:
// CudaUnavailable when there is no usable device/driver or no kernel image for the device, else
// std::runtime_error. Sizes are non-zero; arguments are validated by the dispatch layer.
#pragma once

#include <cstdint>
#include <string>

#include "../../common.h"

namespace iafsr {
namespace cuda {

// Number of usable devices; 0 (and the reason in *reason) without a driver or device.
int device_count(std::string* reason);
// Version of the CUDA runtime this build was compiled and statically linked against, e.g. "13.0".
std::string runtime_version();
// Driver's CUDA version, e.g. "13.0"; "none" without a driver.
std::string driver_version();
// Ordinal of the device that owns `ptr`; throws if it is not device (or managed) memory.
int pointer_device(const void* ptr, const std::string& what);
// Makes `consumer` wait for the work queued so far on `producer` (__cuda_array_interface__ v3 streams).
void wait_for_stream(intptr_t producer, intptr_t consumer);

// Selects a device for the lifetime of the object and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

void zero(void* data, int64_t bytes, intptr_t stream);

void pixel_shuffle_prelu(DType dtype, const void* x, const void* slope, bool slope_per_channel, void* out,
                         int64_t n, int64_t channels_out, int64_t h, int64_t w, int64_t r, intptr_t stream);
void pixel_shuffle_prelu_backward(DType dtype, const void* grad_out, const void* x, const void* slope,
                                  bool slope_per_channel, void* grad_x, void* grad_slope, int64_t n,
                                  int64_t channels_out, int64_t h, int64_t w, int64_t r, intptr_t stream);
void l2_norm(DType dtype, const void* x, float* out, int64_t rows, int64_t dim, intptr_t stream);
void l2_normalize(DType dtype, const void* x, double eps, void* out, int64_t rows, int64_t dim,
                  intptr_t stream);
void cosine_similarity(DType dtype, const void* a, const void* b, float* out, int64_t rows, int64_t dim,
                       intptr_t stream);
void cosine_matrix(DType dtype, const void* a, const void* b, float* out, int64_t rows_a, int64_t rows_b,
                   int64_t dim, intptr_t stream);
void identity_loss(DType dtype, const void* f_sr, const void* f_hr, float* cos_loss, float* mag_loss,
                   void* grad_cos, void* grad_mag, int64_t rows, int64_t dim, intptr_t stream);
void match(DType dtype, const void* probes, const void* gallery, int64_t k, int64_t* indices, float* scores,
           int64_t rows_p, int64_t rows_g, int64_t dim, intptr_t stream);

}  // namespace cuda
}  // namespace iafsr
