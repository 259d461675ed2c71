// LocalCommunicator: the size-1 communicator. It checks arguments exactly as a real one would, so
// a single-process run catches the mistakes a multi-rank run would.
#include <cstdio>
#include <cstdlib>

#include "core/communicator.h"

namespace meshtrain {

void LocalCommunicator::all_reduce(Tensor& t, ReduceOp op) { check_reduce("all_reduce", t, op); }

std::unique_ptr<Work> LocalCommunicator::all_reduce_async(Tensor& t, ReduceOp op) {
  all_reduce(t, op);
  return std::make_unique<CompletedWork>();
}

void LocalCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  check_reduce_scatter(in, out, op);
  if (in.raw() != out.raw()) out.copy_from(in);
}

std::unique_ptr<Work> LocalCommunicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  reduce_scatter(in, out, op);
  return std::make_unique<CompletedWork>();
}

void LocalCommunicator::all_gather(const Tensor& in, Tensor& out) {
  check_all_gather(in, out);
  if (in.raw() != out.raw()) out.copy_from(in);
}

std::unique_ptr<Work> LocalCommunicator::all_gather_async(const Tensor& in, Tensor& out) {
  all_gather(in, out);
  return std::make_unique<CompletedWork>();
}

void LocalCommunicator::broadcast(Tensor& t, int root) {
  check_root("broadcast", root);
  check_tensor("broadcast", t, "broadcast");
}

// Point-to-point has no peer on one rank; check_peer names the bad peer, and a self-message (which
// MPI allows for isend/irecv) is refused as not supported rather than buffered.
void LocalCommunicator::send(const Tensor&, int dst, int tag) { check_peer("send", dst, tag, false); }

void LocalCommunicator::recv(Tensor&, int src, int tag) { check_peer("recv", src, tag, false); }

std::unique_ptr<Work> LocalCommunicator::isend(const Tensor&, int dst, int tag) {
  check_peer("isend", dst, tag, true);
  MT_FAIL("[isend] {}: not supported: a communicator of size 1 has no other rank to send to", where());
}

std::unique_ptr<Work> LocalCommunicator::irecv(Tensor&, int src, int tag) {
  check_peer("irecv", src, tag, true);
  MT_FAIL("[irecv] {}: not supported: a communicator of size 1 has no other rank to receive from", where());
}

std::unique_ptr<Communicator> LocalCommunicator::split(int color, int) {
  if (color < 0) return nullptr;
  auto child = std::make_unique<LocalCommunicator>();
  child->set_name(name() + "/split");
  return child;
}

void LocalCommunicator::abort(int code) {
  std::fflush(nullptr);
  std::_Exit(code);
}

}  // namespace meshtrain
