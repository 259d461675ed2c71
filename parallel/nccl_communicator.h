// NcclCommunicator: the Communicator for GPU tensors over NCCL. Operations run on a communication
// stream of its own, ordered after the caller's compute stream by CUDA events, so compute and
// communication overlap without host synchronisation. This header needs neither CUDA's nor NCCL's
// headers: builds without NCCL (MESHTRAIN_NCCL=OFF) compile it too, and their factory throws.
#pragma once

#include <memory>

#include "core/communicator.h"

struct CUstream_st;  // what cudaStream_t points to

namespace meshtrain {

/// A CUDA stream (cudaStream_t) without CUDA's headers; nullptr is the default stream.
using CudaStreamHandle = CUstream_st*;

/// True when this build has the NCCL communicator (CMake option MESHTRAIN_NCCL).
bool nccl_built();

/// The NCCL communicator's interface beyond Communicator: streams, and a grouped exchange.
///
/// Tensors live on this communicator's device (Device::cuda); host tensors are accepted too and staged
/// through device memory (the operation then completes before the call returns, async ones included).
/// u16 has no NCCL type and throws.
/// The blocking methods return once the operation is complete on the GPU. The _async methods, isend
/// and irecv return a Work whose wait() does not block the host: it makes the compute stream wait
/// for the operation, so work queued on that stream afterwards (kernels, Tensor::copy_from on the
/// default stream) sees the results; test() says whether the GPU has finished it.
///
/// Point-to-point: NCCL matches the sends and receives between two ranks in the order they are
/// issued and ignores tags (they are only range-checked). A send or receive blocks the
/// communication stream until its peer's matching call runs, so two ranks that both send to and
/// receive from each other must issue the calls in matching order (one sends first, the other
/// receives first) or use send_recv. A rank cannot send to itself except through send_recv.
class NcclCommunicator : public Communicator {
 public:
  /// The CUDA device this communicator's tensors and streams live on. Not collective.
  virtual int device() const = 0;
  /// Operations start after the work queued on stream when they are called, and Work::wait()
  /// orders stream after them. stream must belong to device(); nullptr, the default, is the
  /// default stream. split() passes it on. Not collective.
  virtual void set_compute_stream(CudaStreamHandle stream) = 0;
  virtual CudaStreamHandle compute_stream() const = 0;
  /// The stream NCCL runs on, owned by this communicator (for profilers and events).
  virtual CudaStreamHandle comm_stream() const = 0;
  /// Sends `send` to rank dst and receives `recv` from rank src as one NCCL group, so that
  /// neighbours exchanging tensors (pipeline stages) need no ordering, and dst == src == rank()
  /// copies. Either tensor may be undefined to only send or only receive. Not collective.
  virtual std::unique_ptr<Work> send_recv(const Tensor& send, int dst, Tensor& recv, int src) = 0;

 protected:
  using Communicator::Communicator;
};

/// Makes an NCCL communicator over the ranks of bootstrap (an MpiCommunicator, or any
/// Communicator that moves host tensors), with the same rank numbers; each rank uses GPU `device`,
/// which becomes the calling thread's current device. Collective over bootstrap; every rank throws
/// if any rank cannot use its GPU or two ranks on one host picked the same GPU (NCCL needs one GPU
/// per rank). bootstrap must outlive the result and everything split from it: abort() goes
/// through it. Throws "[nccl] not built" in builds without NCCL.
std::unique_ptr<NcclCommunicator> make_nccl_communicator(Communicator& bootstrap, int device);

}  // namespace meshtrain
