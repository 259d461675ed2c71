// CUDA_CHECK: turns a failing CUDA runtime call into meshtrain::Error naming the call and location.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                  \
  do {                                                                                    \
    cudaError_t mt_err_ = (call);                                                         \
    if (mt_err_ != cudaSuccess)                                                           \
      ::meshtrain::throw_error(__FILE__, __LINE__, fmt::format("[cuda] {} failed: {}", #call, \
                                                               cudaGetErrorString(mt_err_))); \
  } while (0)
