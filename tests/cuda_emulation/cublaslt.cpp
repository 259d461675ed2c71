// CUDA emulation: cuBLASLt as a column-major host GEMM (OpenBLAS sgemm on fp32 copies of the
// operands; see include/cublasLt.h).
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cuda_bf16.h"
#include "cublasLt.h"

namespace mt_emu {

struct LtHandle {};
struct LtMatmulDesc {
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};
struct LtLayout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
struct LtPreference {};

namespace {

float load(cudaDataType_t t, const void* p, int64_t i) {
  return t == CUDA_R_32F ? static_cast<const float*>(p)[i] : __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

void store(cudaDataType_t t, void* p, int64_t i, float v) {
  if (t == CUDA_R_32F) static_cast<float*>(p)[i] = v;
  else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}

}  // namespace

}  // namespace mt_emu

using namespace mt_emu;

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  *h = new LtHandle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = new LtMatmulDesc;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete d;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: std::memcpy(&d->transa, buf, std::min(size, sizeof(d->transa))); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: std::memcpy(&d->transb, buf, std::min(size, sizeof(d->transb))); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      uint32_t e = 0;
      std::memcpy(&e, buf, std::min(size, sizeof(e)));
      d->epilogue = static_cast<cublasLtEpilogue_t>(e);
      break;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: std::memcpy(&d->bias, buf, sizeof(void*)); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: std::memcpy(&d->aux, buf, sizeof(void*)); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: std::memcpy(&d->aux_ld, buf, sizeof(int64_t)); break;
    default: return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (type != CUDA_R_32F && type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (ld < static_cast<int64_t>(rows)) return CUBLAS_STATUS_INVALID_VALUE;
  *l = new LtLayout{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete l;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = new LtPreference;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t* results, int* returned) {
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  std::memset(results, 0, sizeof(*results));
  results->state = CUBLAS_STATUS_SUCCESS;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha_p, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta_p,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t stream) {
  const LtMatmulDesc g = *desc;  // attributes as they are now: the desc may change before the work runs
  const int64_t m = static_cast<int64_t>(d->rows), n = static_cast<int64_t>(d->cols);
  const bool ta = g.transa == CUBLAS_OP_T, tb = g.transb == CUBLAS_OP_T;
  const int64_t k = static_cast<int64_t>(ta ? a->rows : a->cols);
  if (static_cast<int64_t>(ta ? a->cols : a->rows) != m || static_cast<int64_t>(tb ? b->cols : b->rows) != k ||
      static_cast<int64_t>(tb ? b->rows : b->cols) != n || c->rows != d->rows || c->cols != d->cols)
    return CUBLAS_STATUS_INVALID_VALUE;
  const bool bias = g.epilogue == CUBLASLT_EPILOGUE_BIAS || g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool gelu = g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  if ((bias && !g.bias) || (gelu && (!g.aux || g.aux_ld < m))) return CUBLAS_STATUS_INVALID_VALUE;
  const float alpha = *static_cast<const float*>(alpha_p), beta = *static_cast<const float*>(beta_p);
  const LtLayout la = *a, lb = *b, lc = *c, ld = *d;
  ::mt_emu::enqueue_host(stream, [=] {
    // fp32 copies of op(A) and op(B)'s storage, then one sgemm into an fp32 copy of C.
    auto widen = [](const LtLayout& l, const void* p) {
      std::vector<float> out(static_cast<size_t>(l.ld) * l.cols);
      for (uint64_t j = 0; j < l.cols; ++j)
        for (uint64_t i = 0; i < l.rows; ++i) out[i + j * l.ld] = load(l.type, p, static_cast<int64_t>(i + j * l.ld));
      return out;
    };
    const std::vector<float> fa = widen(la, A), fb = widen(lb, B);
    std::vector<float> acc(static_cast<size_t>(m) * n, 0.0f);
    if (beta != 0.0f)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < m; ++i) acc[i + j * m] = load(lc.type, C, i + j * lc.ld);
    if (k > 0)
      cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
                  static_cast<int>(n), static_cast<int>(k), alpha, fa.data(), static_cast<int>(la.ld), fb.data(),
                  static_cast<int>(lb.ld), beta, acc.data(), static_cast<int>(m));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) {
        float v = acc[i + j * m];
        if (bias) v += load(ld.type, g.bias, i);
        if (gelu) {
          store(ld.type, g.aux, i + j * g.aux_ld, v);
          v = gelu_tanh(v);
        }
        store(ld.type, D, i + j * ld.ld, v);
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS (emulated)";
  }
}
const char* cublasLtGetStatusString(cublasStatus_t s) { return cublasLtGetStatusName(s); }
