// The NCCL communicator when meshtrain is built without NCCL (MESHTRAIN_NCCL=OFF): the factory
// throws a named error, so callers fail with a fix instead of a link error.
#include "parallel/nccl_communicator.h"

namespace meshtrain {

bool nccl_built() { return false; }

std::unique_ptr<NcclCommunicator> make_nccl_communicator(Communicator&, int) {
  MT_FAIL(
      "[nccl] not built: this meshtrain has no NCCL communicator; reconfigure with -DMESHTRAIN_CUDA=ON on a "
      "machine with NCCL 2.18 or newer (set NCCL_ROOT if CMake does not find it), or communicate over MPI");
}

}  // namespace meshtrain
