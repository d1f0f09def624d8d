#include "common.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <thread>

namespace iafsr {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float16: return "float16";
    case DType::float32: return "float32";
    case DType::int64: return "int64";
    default: return "unsupported";
  }
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::float16: return 2;
    case DType::float32: return 4;
    case DType::int64: return 8;
    default: return 1;
  }
}

int64_t Buffer::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

static std::string where(const Buffer& b) {
  if (b.device == DeviceKind::cpu) return "host";
  return b.device_index >= 0 ? "CUDA:" + std::to_string(b.device_index) : "CUDA";
}

std::string describe(const Buffer& b) {
  return std::to_string(b.ndim()) + "-D " + b.dtype_text + " " + where(b) + " array with shape " +
         shape_text(b.shape);
}

void fail(const std::string& message) { throw std::invalid_argument(message); }
void fail_type(const std::string& message) { throw TypeMismatch(message); }

void check_rank(const char* op, const char* name, const Buffer& b, int ndim, const char* layout) {
  if (b.ndim() != ndim)
    fail(std::string(op) + ": expected " + name + " to be a " + std::to_string(ndim) + "-D " + layout +
         " array, got " + std::to_string(b.ndim()) + "-D with shape " + shape_text(b.shape));
}

void check_float(const char* op, const char* name, const Buffer& b) {
  if (b.dtype == DType::float32) return;
  if (b.dtype == DType::float16) {
    if (b.device == DeviceKind::cuda) return;
    fail_type(std::string(op) + ": float16 is supported on CUDA only; " + name + " is a " + describe(b) +
              " (convert it to float32)");
  }
  fail_type(std::string(op) + ": expected " + name + " to be float32 (or float16 on CUDA), got " +
            b.dtype_text);
}

void check_same_dtype(const char* op, const NamedBuffer& reference, const NamedBuffer& other) {
  if (reference.second->dtype != other.second->dtype)
    fail_type(std::string(op) + ": " + other.first + " must have the dtype of " + reference.first + " (" +
              reference.second->dtype_text + "), got " + other.second->dtype_text);
}

void check_dtype(const char* op, const char* name, const Buffer& b, DType expected) {
  if (b.dtype != expected)
    fail_type(std::string(op) + ": expected " + name + " to be " + dtype_name(expected) + ", got " +
              b.dtype_text);
}

void check_input_layout(const char* op, const char* name, const Buffer& b) {
  if (!b.contiguous)
    fail(std::string(op) + ": " + name + " must be C-contiguous; got a strided view (" + describe(b) +
         "); copy it first (numpy.ascontiguousarray, cupy.ascontiguousarray, tensor.contiguous())");
  if (!b.aligned)
    fail(std::string(op) + ": " + name + " is not aligned to its element size; copy it first");
}

void check_output(const char* op, const char* name, const Buffer& b, const std::vector<int64_t>& shape,
                  DType dtype) {
  if (b.shape != shape)
    fail(std::string(op) + ": expected " + name + " to have shape " + shape_text(shape) + ", got " +
         shape_text(b.shape));
  check_dtype(op, name, b, dtype);
  check_input_layout(op, name, b);
  if (!b.writable) fail(std::string(op) + ": " + name + " is read-only");
}

void check_same_device(const char* op, std::initializer_list<NamedBuffer> buffers) {
  const NamedBuffer* first = nullptr;
  for (const NamedBuffer& nb : buffers) {
    if (!first) {
      first = &nb;
      continue;
    }
    const Buffer& a = *first->second;
    const Buffer& b = *nb.second;
    bool same = a.device == b.device &&
                (a.device == DeviceKind::cpu || a.device_index < 0 || b.device_index < 0 ||
                 a.device_index == b.device_index);
    if (!same)
      fail_type(std::string(op) + ": " + first->first + " is a " + where(a) + " array but " + nb.first +
                " is a " + where(b) + " array; all arrays must be on the same device");
  }
}

void check_no_overlap(const char* op, std::initializer_list<NamedBuffer> outputs,
                      std::initializer_list<NamedBuffer> inputs) {
  auto overlaps = [](const Buffer& a, const Buffer& b) {
    if (a.numel() == 0 || b.numel() == 0 || a.device != b.device) return false;
    auto a0 = reinterpret_cast<uintptr_t>(a.data), b0 = reinterpret_cast<uintptr_t>(b.data);
    return a0 < b0 + static_cast<uintptr_t>(b.nbytes()) && b0 < a0 + static_cast<uintptr_t>(a.nbytes());
  };
  for (auto out = outputs.begin(); out != outputs.end(); ++out) {
    for (const NamedBuffer& in : inputs)
      if (overlaps(*out->second, *in.second))
        fail(std::string(op) + ": output " + out->first + " shares memory with input " + in.first);
    for (auto other = out + 1; other != outputs.end(); ++other)
      if (overlaps(*out->second, *other->second))
        fail(std::string(op) + ": outputs " + out->first + " and " + other->first + " share memory");
  }
}

int cpu_threads() {
  if (const char* env = std::getenv("IAFSR_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n > 0) return static_cast<int>(std::min<long>(n, 1024));
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads = std::min<int64_t>(cpu_threads(), (n + grain - 1) / grain);
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  // Several chunks per thread, taken in turn: a thread that the OS deschedules (other processes share the
  // CPUs) holds up only its current chunk.
  const int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, threads * 8);
  std::atomic<int64_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  auto work = [&](int64_t thread) {
    try {
      for (int64_t chunk = next++; chunk < chunks; chunk = next++) fn(n * chunk / chunks, n * (chunk + 1) / chunks);
    } catch (...) {
      errors[static_cast<size_t>(thread)] = std::current_exception();
      next = chunks;  // the others stop after their current chunk
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(threads - 1));
  for (int64_t thread = 1; thread < threads; ++thread) workers.emplace_back(work, thread);
  work(0);
  for (std::thread& t : workers) t.join();
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
}

}  // namespace iafsr
