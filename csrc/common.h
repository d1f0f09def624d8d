// Shared types of the iafsr kernels: a plain description of an array (pointer, dtype, device, shape),
// the errors raised to Python, argument checks, and the CPU thread helper.
// Nothing here depends on Python or CUDA headers.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace iafsr {

enum class DType { float16, float32, int64, other };
enum class DeviceKind { cpu, cuda };

const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

// One array argument as received from Python, after conversion (see bindings.cpp).
struct Buffer {
  void* data = nullptr;
  DType dtype = DType::other;
  std::string dtype_text;          // dtype as the caller spelled it, for messages ("float64", "<i2")
  DeviceKind device = DeviceKind::cpu;
  int device_index = -1;           // CUDA ordinal; -1 on the host or for an empty CUDA array
  std::vector<int64_t> shape;
  std::vector<int64_t> byte_strides;
  bool contiguous = true;          // C-contiguous
  bool writable = true;
  bool aligned = true;
  intptr_t producer_stream = 0;    // __cuda_array_interface__ v3 "stream"; 0 when none was given

  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t numel() const;
  int64_t nbytes() const { return numel() * static_cast<int64_t>(dtype_size(dtype)); }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
};

// std::invalid_argument reaches Python as ValueError (pybind11's default); these two are translated in
// bindings.cpp: TypeMismatch -> TypeError, CudaUnavailable -> iafsr_sdk.CudaUnavailableError.
struct TypeMismatch : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct CudaUnavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using NamedBuffer = std::pair<const char*, const Buffer*>;

std::string shape_text(const std::vector<int64_t>& shape);
std::string describe(const Buffer& b);  // "3-D float32 host array with shape (2, 3, 4)"

// Argument checks. `op` and `name` only build the message.
void check_rank(const char* op, const char* name, const Buffer& b, int ndim, const char* layout);
// float32 anywhere, float16 on CUDA only.
void check_float(const char* op, const char* name, const Buffer& b);
void check_same_dtype(const char* op, const NamedBuffer& reference, const NamedBuffer& other);
void check_dtype(const char* op, const char* name, const Buffer& b, DType expected);
// Inputs: C-contiguous and aligned (the Python facade copies other layouts first).
void check_input_layout(const char* op, const char* name, const Buffer& b);
// Outputs: exact shape and dtype, C-contiguous, aligned, writable.
void check_output(const char* op, const char* name, const Buffer& b, const std::vector<int64_t>& shape,
                  DType dtype);
// All arrays on one device (host, or one CUDA ordinal).
void check_same_device(const char* op, std::initializer_list<NamedBuffer> buffers);
// No output may share memory with an input or with another output.
void check_no_overlap(const char* op, std::initializer_list<NamedBuffer> outputs,
                      std::initializer_list<NamedBuffer> inputs);

[[noreturn]] void fail(const std::string& message);       // ValueError
[[noreturn]] void fail_type(const std::string& message);  // TypeError

// CPU threads: IAFSR_NUM_THREADS when set to a positive integer, else the CPUs this process may run on.
int cpu_threads();
// Splits [0, n) into contiguous ranges of at least `grain` items and runs fn(begin, end) on each, on up
// to cpu_threads() threads (the calling one included). Which thread runs a range varies from call to call,
// so fn must write per-item results only (as every kernel does); an exception in fn is rethrown here.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace iafsr
