#include "simd.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu_kernels.h"

namespace iafsr {
namespace cpu {

static Simd best_supported() {
#if IAFSR_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Simd::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Simd::avx2;
#endif
  return Simd::baseline;
}

static const char* name_of(Simd s) {
  switch (s) {
    case Simd::avx512: return "avx512";
    case Simd::avx2: return "avx2";
    default: return "baseline";
  }
}

static Simd from_name(const std::string& name) {
  if (name == "avx512") return Simd::avx512;
  if (name == "avx2") return Simd::avx2;
  if (name == "baseline") return Simd::baseline;
  throw std::invalid_argument("unknown SIMD level '" + name + "'; expected auto, baseline, avx2 or avx512");
}

// IAFSR_SIMD=baseline|avx2|avx512 caps the level at load time (never above what the CPU supports).
static Simd initial_level() {
  Simd best = best_supported();
  const char* env = std::getenv("IAFSR_SIMD");
  if (!env || std::string(env).empty() || std::string(env) == "auto") return best;
  try {
    Simd wanted = from_name(env);
    return static_cast<int>(wanted) < static_cast<int>(best) ? wanted : best;
  } catch (const std::invalid_argument&) {
    return best;
  }
}

static std::atomic<int> level{static_cast<int>(initial_level())};

Simd active_simd() { return static_cast<Simd>(level.load(std::memory_order_relaxed)); }

std::string simd_level() { return name_of(active_simd()); }

std::string set_simd_level(const std::string& name) {
  Simd best = best_supported();
  Simd wanted = name == "auto" ? best : from_name(name);
  if (static_cast<int>(wanted) > static_cast<int>(best))
    throw std::invalid_argument(std::string("this CPU does not support ") + name_of(wanted) +
                                " (best available: " + name_of(best) + ")");
  level.store(static_cast<int>(wanted));
  return name_of(wanted);
}

}  // namespace cpu
}  // namespace iafsr
