// Lets `#pragma omp simd` loops call glibc's vector math (libmvec, linked through libm).
// glibc declares the vector variants of expf/tanhf only under -ffast-math, which this project does
// not use; declaring them "simd" here makes GCC call the 8-wide AVX2 versions (within a few ulp)
// instead of one scalar call per element. Elsewhere this header declares nothing.
#pragma once

#include <cmath>

#if defined(__x86_64__) && defined(__GLIBC__)
extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
float tanhf(float) noexcept;
}
#endif
