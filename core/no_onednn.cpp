// Builds without oneDNN: the CPU bf16 GEMMs say so (core/gemm_onednn.h).
#include "core/error.h"
#include "core/gemm_onednn.h"

namespace meshtrain {

bool onednn_built() { return false; }
std::string onednn_bf16_isa() { return ""; }
bool onednn_bf16_matmuls() { return false; }
void gemm_onednn(GemmType, bool, bool, int, int, int, const void*, int, const void*, int, float, float*, int) {
  MT_FAIL("[bf16-cpu] not built: this build has no oneDNN; install libdnnl-dev (bash scripts/setup.sh) and "
          "configure again");
}
int64_t onednn_primitives_created() { return 0; }

}  // namespace meshtrain
