// LocalCommunicator: the size-1 communicator.
#include "parallel/communicator.h"

namespace meshtrain {

void LocalCommunicator::all_reduce(Tensor& t, ReduceOp) {
  MT_CHECK(t.defined(), "[all_reduce] undefined tensor");
}

void LocalCommunicator::broadcast(Tensor& t, int root) {
  MT_CHECK(root == 0, "[broadcast] root {} outside a communicator of size 1", root);
  MT_CHECK(t.defined(), "[broadcast] undefined tensor");
}

std::unique_ptr<Communicator> LocalCommunicator::split(int, int) { return std::make_unique<LocalCommunicator>(); }

}  // namespace meshtrain
