// Run-time choice of the vector instruction set for the CPU kernels. The extension is compiled for the
// baseline of the platform (no -march); on x86 the AVX2/FMA and AVX-512 code lives in functions with
// target attributes and runs only where the CPU reports those features. "baseline" is portable code
// (4-wide GCC vector types: SSE2 on x86-64, NEON on Arm).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#define IAFSR_X86 1
#include <immintrin.h>
#else
#define IAFSR_X86 0
#endif

namespace iafsr {
namespace cpu {

enum class Simd { baseline, avx2, avx512 };

Simd active_simd();

}  // namespace cpu
}  // namespace iafsr
