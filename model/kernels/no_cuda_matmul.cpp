// CudaMatmul when meshtrain is built without CUDA (MESHTRAIN_CUDA=OFF): constructing one throws a named
// error, so model code can hold the type unconditionally and fail clearly if it ever asks for the GPU.
#include <cstddef>

#include "core/error.h"
#include "model/kernels/matmul_cuda.h"

namespace meshtrain {

#define MT_NO_CUDA(op) MT_FAIL("[cuda] not built: {} needs a build with -DMESHTRAIN_CUDA=ON", op)

struct CudaMatmul::Impl {};

CudaMatmul::CudaMatmul(void*) { MT_NO_CUDA("CudaMatmul"); }
CudaMatmul::~CudaMatmul() = default;
void CudaMatmul::forward(float*, const float*, const float*, const float*, int, int, int, float*) {
  MT_NO_CUDA("CudaMatmul::forward");
}
void CudaMatmul::forward(Bf16*, const Bf16*, const Bf16*, const Bf16*, int, int, int, Bf16*) {
  MT_NO_CUDA("CudaMatmul::forward");
}
void CudaMatmul::backward(float*, float*, float*, const float*, const float*, const float*, int, int, int, bool) {
  MT_NO_CUDA("CudaMatmul::backward");
}
void CudaMatmul::backward(Bf16*, Bf16*, Bf16*, const Bf16*, const Bf16*, const Bf16*, int, int, int, bool) {
  MT_NO_CUDA("CudaMatmul::backward");
}
size_t CudaMatmul::workspace_bytes() const { MT_NO_CUDA("CudaMatmul::workspace_bytes"); }

#undef MT_NO_CUDA

}  // namespace meshtrain
