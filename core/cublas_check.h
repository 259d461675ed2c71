// CUBLAS_CHECK: turns a failing cuBLASLt (or cuBLAS) call into meshtrain::Error naming the call, its
// location and the status. The names come from cublasLtGetStatusName, since cuBLASLt is the one BLAS
// library meshtrain links (both libraries share cublasStatus_t).
#pragma once

#include <cublasLt.h>

#include "core/error.h"

#define CUBLAS_CHECK(call)                                                                                          \
  do {                                                                                                              \
    cublasStatus_t mt_status_ = (call);                                                                             \
    if (mt_status_ != CUBLAS_STATUS_SUCCESS)                                                                        \
      ::meshtrain::throw_error(__FILE__, __LINE__,                                                                  \
                               fmt::format("[cublas] {} failed: {} ({})", #call, cublasLtGetStatusName(mt_status_), \
                                           cublasLtGetStatusString(mt_status_)));                                   \
  } while (0)
