// CUDA runtime queries and error handling. The runtime is linked statically (libcudart_static), so the
// extension loads without a driver; calls then fail here and report CUDA as unavailable.
#include <stdexcept>
#include <string>

#include "cuda_helpers.h"

namespace iafsr {
namespace cuda {

static bool means_unavailable(cudaError_t status) {
  return status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver ||
         status == cudaErrorNoKernelImageForDevice || status == cudaErrorUnsupportedPtxVersion ||
         status == cudaErrorInvalidDevice || status == cudaErrorDevicesUnavailable ||
         status == cudaErrorSystemDriverMismatch || status == cudaErrorCompatNotSupportedOnDevice ||
         status == cudaErrorInitializationError;
}

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so later calls are not blamed for it
  std::string message = std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorUnsupportedPtxVersion) {
    int device = 0, major = 0, minor = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    message += "; the device has compute capability " + std::to_string(major) + "." + std::to_string(minor) +
               " but this build has code for sm_80, sm_90 and PTX compute_90 (set IAFSR_CUDA_ARCHS and rebuild)";
  }
  if (means_unavailable(status)) throw CudaUnavailable(message);
  throw std::runtime_error(message);
}

int device_count(std::string* reason) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    *reason = std::string("no usable CUDA driver or device (") + cudaGetErrorName(status) + ": " +
              cudaGetErrorString(status) + ")";
    return 0;
  }
  if (count == 0) *reason = "no CUDA device found";
  return count;
}

static std::string version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

std::string runtime_version() { return version_text(CUDART_VERSION); }

std::string driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess || version == 0) return "none";
  return version_text(version);
}

int pointer_device(const void* ptr, const std::string& what) {
  cudaPointerAttributes attributes{};
  cudaError_t status = cudaPointerGetAttributes(&attributes, ptr);
  if (status != cudaSuccess) {
    cudaGetLastError();
    if (means_unavailable(status))
      throw CudaUnavailable(what + " is a CUDA array but CUDA is unavailable: " + cudaGetErrorName(status) + " (" +
                            cudaGetErrorString(status) + ")");
    throw std::invalid_argument(what + ": its __cuda_array_interface__ pointer is not CUDA memory (" +
                                cudaGetErrorName(status) + ")");
  }
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(what + ": its __cuda_array_interface__ pointer is not device memory (a host pointer?)");
  return attributes.device;
}

static cudaStream_t interface_stream(intptr_t value) {
  if (value == 1) return cudaStreamLegacy;
  if (value == 2) return cudaStreamPerThread;
  return as_stream(value);
}

void wait_for_stream(intptr_t producer, intptr_t consumer) {
  cudaStream_t from = interface_stream(producer);
  cudaStream_t to = consumer == 0 ? cudaStreamLegacy : as_stream(consumer);
  if (from == to) return;
  cudaEvent_t event;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "stream synchronization");
  cudaError_t status = cudaEventRecord(event, from);
  if (status == cudaSuccess) status = cudaStreamWaitEvent(to, event, 0);
  cudaEventDestroy(event);
  check(status, "stream synchronization");
}

DeviceGuard::DeviceGuard(int device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
}

void zero(void* data, int64_t bytes, intptr_t stream) {
  check(cudaMemsetAsync(data, 0, static_cast<size_t>(bytes), as_stream(stream)), "cudaMemsetAsync");
}

}  // namespace cuda
}  // namespace iafsr
