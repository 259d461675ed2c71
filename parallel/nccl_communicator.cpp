// NcclCommunicator over NCCL 2.18+. Each operation checks its tensors as MpiCommunicator does (the
// base class's checks, so messages match), makes the communication stream wait for an event on the
// compute stream, issues its NCCL call(s), and then either polls the stream to completion (blocking
// methods) or returns an NcclWork that holds an event recorded after the call(s).
#include "parallel/nccl_communicator.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/device.h"
#include "core/watchdog.h"
#include "model/backend.h"
#include "parallel/nccl_handles.h"

// NCCL_CHECK and CUDA_CHECK inside a communicator's operation: the message names the operation
// and the rank, and the communicator is marked failed (it will be aborted, not destroyed). NCCL's
// calls return once the work is queued, but may block on the way (a connection to a peer set up
// at its first use; the CUDA emulation runs collectives inside the call): the watchdog times them.
#define NCCL_OP_CHECK(op, call)                                 \
  do {                                                          \
    CommWatchdog::Guard mt_watch_(op, [&] { return where(); }); \
    nccl_check(op, #call, (call), __FILE__, __LINE__);          \
  } while (0)
#define CUDA_OP_CHECK(op, call) cuda_check(op, #call, (call), __FILE__, __LINE__)

namespace meshtrain {
namespace {

using namespace nccl_detail;

char* bytes(const Tensor& t) { return static_cast<char*>(t.raw()); }

/// t itself on the GPU, else a GPU copy of it (host tensors are staged through device memory).
Tensor on_gpu(const Tensor& t) { return t.on(Device::cuda); }

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  return bytes(a) < bytes(b) + b.nbytes() && bytes(b) < bytes(a) + a.nbytes();
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::avg:
      return ncclAvg;  // check_reduce admits it for floating dtypes only, as MpiCommunicator does
    case ReduceOp::max:
      return ncclMax;
  }
  return ncclSum;
}

class NcclComm final : public NcclCommunicator {
 public:
  using Communicator::where;  // NcclWork's messages name the communicator too
  /// Adopts comm, made for device (which must be current).
  NcclComm(Communicator& bootstrap, int device, ncclComm_t comm, std::string name);
  /// Waits for the communication stream, then destroys (or, after a failure, aborts) the NCCL
  /// communicator. Unfinished Work from this communicator must be gone before it is.
  ~NcclComm() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const override { return device_; }
  void set_compute_stream(CudaStreamHandle stream) override { compute_ = stream; }
  CudaStreamHandle compute_stream() const override { return compute_; }
  CudaStreamHandle comm_stream() const override { return stream_.get(); }
  bool on_device_streams() const override { return true; }

  // Host tensors are accepted too: each is copied to the GPU, the operation runs there to completion
  // and results are copied back (for the few host values a training step agrees on: losses, norms).
  void all_reduce(Tensor& t, ReduceOp op) override {
    if (t.device() == Device::cuda) return (void)start_all_reduce(t, op, true);
    Tensor d = on_gpu(t);
    start_all_reduce(d, op, true);
    t.copy_from(d);
  }
  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    if (t.device() == Device::cuda) return start_all_reduce(t, op, false);
    all_reduce(t, op);
    return std::make_unique<CompletedWork>();
  }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    if (in.device() == Device::cuda && out.device() == Device::cuda) return (void)start_reduce_scatter(in, out, op, true);
    Tensor d = on_gpu(out);
    start_reduce_scatter(on_gpu(in), d, op, true);
    if (out.device() != Device::cuda) out.copy_from(d);
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    if (in.device() == Device::cuda && out.device() == Device::cuda) return start_reduce_scatter(in, out, op, false);
    reduce_scatter(in, out, op);
    return std::make_unique<CompletedWork>();
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    if (in.device() == Device::cuda && out.device() == Device::cuda) return (void)start_all_gather(in, out, true);
    Tensor d = on_gpu(out);
    start_all_gather(on_gpu(in), d, true);
    if (out.device() != Device::cuda) out.copy_from(d);
  }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) override {
    if (in.device() == Device::cuda && out.device() == Device::cuda) return start_all_gather(in, out, false);
    all_gather(in, out);
    return std::make_unique<CompletedWork>();
  }
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag) override { start_p2p("send", on_gpu(t), dst, tag, true, true); }
  void recv(Tensor& t, int src, int tag) override {
    if (t.device() == Device::cuda) return (void)start_p2p("recv", t, src, tag, false, true);
    Tensor d = on_gpu(t);
    start_p2p("recv", d, src, tag, false, true);
    t.copy_from(d);
  }
  std::unique_ptr<Work> isend(const Tensor& t, int dst, int tag) override {
    if (t.device() == Device::cuda) return start_p2p("isend", t, dst, tag, true, false);
    send(t, dst, tag);
    return std::make_unique<CompletedWork>();
  }
  std::unique_ptr<Work> irecv(Tensor& t, int src, int tag) override {
    if (t.device() == Device::cuda) return start_p2p("irecv", t, src, tag, false, false);
    recv(t, src, tag);
    return std::make_unique<CompletedWork>();
  }
  std::unique_ptr<Work> send_recv(const Tensor& send, int dst, Tensor& recv, int src) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(int code) override;

  /// True while the compute stream is capturing a CUDA graph (operations are then recorded).
  bool capturing() const noexcept {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    return cudaStreamIsCapturing(compute_, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone;
  }

  // For NcclWork.
  /// Throws (and marks this communicator failed) if NCCL reported an error from a running kernel.
  void check_async_error(const char* op);
  /// Takes the event and buffers of a Work that goes away: the buffers are released once the
  /// event has completed (checked at each new operation), so dropping a Work never blocks. Those of
  /// a Work recorded into a CUDA graph are kept as long as this communicator: every replay of the
  /// graph records that event and reads those buffers again.
  void retire(CudaEvent done, std::vector<Tensor> keep, bool captured) noexcept;

 private:
  void nccl_check(const char* op, const char* call, ncclResult_t r, const char* file, int line);
  void cuda_check(const char* op, const char* call, cudaError_t e, const char* file, int line);
  void check_device(const char* op, const Tensor& t, const char* role) const;
  ncclDataType_t nccl_type(const char* op, DType dt) const;
  // Orders the communication stream after the compute stream and releases finished buffers; while
  // a step's device timeline is recorded (model/backend.h: DeviceTrace), marks where the operation of
  // `bytes` starts on the communication stream.
  void begin(const char* op, int64_t bytes);
  // Blocking: waits for the stream and returns nullptr; else a Work that keeps the tensors alive.
  std::unique_ptr<Work> finish(const char* op, std::vector<Tensor> keep, bool blocking);
  // Polls the communication stream to completion, watching for NCCL's asynchronous errors (a peer
  // that died would otherwise leave cudaStreamSynchronize waiting forever).
  void synchronize(const char* op);
  std::unique_ptr<Work> start_all_reduce(Tensor& t, ReduceOp op, bool blocking);
  std::unique_ptr<Work> start_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, bool blocking);
  std::unique_ptr<Work> start_all_gather(const Tensor& in, Tensor& out, bool blocking);
  std::unique_ptr<Work> start_p2p(const char* op, const Tensor& t, int peer, int tag, bool sending, bool blocking);
  // A device copy of t on the communication stream, for inputs that overlap outputs misaligned.
  Tensor stream_copy(const char* op, const Tensor& t);

  struct Retired {
    CudaEvent done;
    std::vector<Tensor> keep;
  };

  Communicator& bootstrap_;
  int device_;
  int rank_ = 0, size_ = 1;
  NcclHandle comm_;
  CommStream stream_;
  CudaEvent ready_;  // recorded on the compute stream before each operation
  DeviceTrace::Span traced_;  // the operation begun, while a step's device timeline is recorded
  cudaStream_t compute_ = nullptr;
  Tensor barrier_flag_;
  int abort_hook_ = -1;  // the watchdog's (CommWatchdog::add_abort_hook)
  std::vector<Retired> retired_;
  std::vector<Retired> captured_;  // events and buffers that CUDA graphs recorded (kept for their replays)
};

// The Work of NcclComm: an event recorded on the communication stream after the operation.
class NcclWork final : public Work {
 public:
  NcclWork(NcclComm& comm, const char* op, std::vector<Tensor> keep)
      : comm_(comm), op_(op), keep_(std::move(keep)), captured_(comm.capturing()) {
    CUDA_CHECK(cudaEventRecord(done_.get(), comm.comm_stream()));
  }
  ~NcclWork() override {
    try {
      wait();
    } catch (...) {
      // Destructors never throw; the error was for whoever waited, and nobody did.
    }
    comm_.retire(std::move(done_), std::move(keep_), captured_);
  }
  /// Makes the compute stream wait for the operation; the host goes on at once.
  void wait() override {
    if (waited_) return;
    waited_ = true;
    DeviceGuard guard(comm_.device());  // the default stream is the current device's
    // A GPU returns at once; a runtime that makes the host wait here (the CUDA emulation) is timed.
    CommWatchdog::Guard watch(op_, [&] { return comm_.where(); });
    cudaError_t e = cudaStreamWaitEvent(comm_.compute_stream(), done_.get(), 0);
    MT_CHECK(e == cudaSuccess, "[{}] cudaStreamWaitEvent on the compute stream failed: {}", op_, cudaGetErrorString(e));
    comm_.check_async_error(op_);
  }
  bool test() override {
    bool done = false;
    cudaError_t e = query_event(done_.get(), done);
    MT_CHECK(e == cudaSuccess, "[{}] the operation failed on the GPU: {}", op_, cudaGetErrorString(e));
    if (!done) {
      comm_.check_async_error(op_);
      return false;
    }
    waited_ = true;  // finished: there is nothing left to order the compute stream after
    return true;
  }

 private:
  NcclComm& comm_;
  const char* op_;
  std::vector<Tensor> keep_;
  CudaEvent done_;
  bool captured_;  // recorded into a CUDA graph: the graph's replays use the event and the tensors
  bool waited_ = false;
};

NcclComm::NcclComm(Communicator& bootstrap, int device, ncclComm_t comm, std::string name)
    : NcclCommunicator(std::move(name)), bootstrap_(bootstrap), device_(device), comm_(comm) {
  NCCL_CHECK(ncclCommUserRank(comm, &rank_));
  NCCL_CHECK(ncclCommCount(comm, &size_));
  // A wait that times out aborts this communicator, which cancels its kernels stuck in a collective
  // (NCCL allows ncclCommAbort from another thread for this); the process ends right after.
  abort_hook_ = CommWatchdog::add_abort_hook([handle = comm_.get()] { (void)ncclCommAbort(handle); });
}

NcclComm::~NcclComm() {
  CommWatchdog::remove_abort_hook(abort_hook_);
  int previous = -1;
  bool switched =
      cudaGetDevice(&previous) == cudaSuccess && previous != device_ && cudaSetDevice(device_) == cudaSuccess;
  (void)cudaStreamSynchronize(stream_.get());
  retired_.clear();
  captured_.clear();
  barrier_flag_ = Tensor();
  if (switched) (void)cudaSetDevice(previous);
  // The members go next: events, the stream, then the NCCL communicator (NCCL sets its device).
}

void NcclComm::nccl_check(const char* op, const char* call, ncclResult_t r, const char* file, int line) {
  if (r == ncclSuccess) return;
  comm_.mark_failed();
  const char* last = ncclGetLastError(comm_.get());
  std::string detail = last && *last ? fmt::format(" ({})", last) : "";
  throw_error(file, line, fmt::format("[{}] {}: {} failed: {}{}", op, where(), call, ncclGetErrorString(r), detail));
}

void NcclComm::cuda_check(const char* op, const char* call, cudaError_t e, const char* file, int line) {
  if (e == cudaSuccess) return;
  comm_.mark_failed();
  throw_error(file, line, fmt::format("[{}] {}: {} failed: {}", op, where(), call, cudaGetErrorString(e)));
}

void NcclComm::check_async_error(const char* op) {
  if (!comm_.get()) return;
  ncclResult_t async = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(comm_.get(), &async);
  if (r == ncclSuccess && (async == ncclSuccess || async == ncclInProgress)) return;
  comm_.mark_failed();
  const char* last = ncclGetLastError(comm_.get());
  MT_FAIL("[{}] {}: NCCL failed while the operation ran: {}{}; this communicator is unusable, end the job", op, where(),
          ncclGetErrorString(r != ncclSuccess ? r : async), last && *last ? fmt::format(" ({})", last) : "");
}

void NcclComm::retire(CudaEvent done, std::vector<Tensor> keep, bool captured) noexcept {
  if (captured) {
    try {
      captured_.push_back({std::move(done), std::move(keep)});
    } catch (...) {  // out of host memory: nothing sensible is left to do
    }
    return;
  }
  bool finished = false;
  (void)query_event(done.get(), finished);
  if (finished || keep.empty()) return;  // a failed event: the stream is dead and holds nothing
  try {
    retired_.reserve(retired_.size() + 1);
  } catch (...) {
    (void)cudaEventSynchronize(done.get());  // no room to defer: wait for the buffers here
    return;
  }
  retired_.push_back({std::move(done), std::move(keep)});
}

void NcclComm::check_device(const char* op, const Tensor& t, const char* role) const {
  MT_CHECK(t.device() == Device::cuda,
           "[{}] {}: the {} tensor is on the cpu; NCCL moves GPU tensors (allocate it with Device::cuda, or use an "
           "MpiCommunicator, which stages device tensors through host memory)",
           op, where(), role);
}

ncclDataType_t NcclComm::nccl_type(const char* op, DType dt) const {
  switch (dt) {
    case DType::f32:
      return ncclFloat32;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::u8:
      return ncclUint8;
    case DType::u16:
      break;
  }
  MT_FAIL("[{}] {}: {} tensors are not supported: NCCL has no 16-bit integer type (use i32, or an MpiCommunicator)", op,
          where(), dtype_name(dt));
}

void NcclComm::begin(const char* op, int64_t bytes) {
  MT_CHECK(!comm_.failed() && comm_.get(),
           "[{}] {}: an earlier NCCL operation failed or the communicator was aborted; it cannot be used any more", op,
           where());
  if (!capturing())
    std::erase_if(retired_, [](const Retired& r) {
      bool done = false;
      (void)query_event(r.done.get(), done);
      return done;
    });
  CUDA_OP_CHECK(op, cudaEventRecord(ready_.get(), compute_));
  CUDA_OP_CHECK(op, cudaStreamWaitEvent(stream_.get(), ready_.get(), 0));
  CommWatchdog::note_queued(op, [&] { return where(); });
  DeviceTrace& trace = DeviceTrace::get();
  traced_.a = -1;
  if (trace.recording()) {
    traced_.cat = "nccl";
    traced_.name = fmt::format("{} ({})", op, where());
    traced_.bytes = bytes;
    traced_.lane = name();
    traced_.a = trace.backend()->mark_on(stream_.get());
  }
}

std::unique_ptr<Work> NcclComm::finish(const char* op, std::vector<Tensor> keep, bool blocking) {
  DeviceTrace& trace = DeviceTrace::get();
  if (traced_.a >= 0 && trace.recording()) {
    traced_.b = trace.backend()->mark_on(stream_.get());
    trace.add(std::move(traced_));
  }
  traced_.a = -1;
  if (!blocking) return std::make_unique<NcclWork>(*this, op, std::move(keep));
  synchronize(op);
  return nullptr;
}

void NcclComm::synchronize(const char* op) {
  CommWatchdog::Guard watch(op, [&] { return where(); });
  for (;;) {
    cudaError_t e = cudaStreamQuery(stream_.get());
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) cuda_check(op, "cudaStreamQuery(communication stream)", e, __FILE__, __LINE__);
    (void)cudaGetLastError();
    check_async_error(op);
    std::this_thread::yield();
  }
}

Tensor NcclComm::stream_copy(const char* op, const Tensor& t) {
  Tensor copy = Tensor::empty({t.numel()}, t.dtype(), Device::cuda);
  CUDA_OP_CHECK(op, cudaMemcpyAsync(copy.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToDevice, stream_.get()));
  return copy;
}

// ---- collectives ----

std::unique_ptr<Work> NcclComm::start_all_reduce(Tensor& t, ReduceOp op, bool blocking) {
  check_reduce("all_reduce", t, op);
  check_device("all_reduce", t, "reduced");
  ncclDataType_t type = nccl_type("all_reduce", t.dtype());
  DeviceGuard guard(device_);
  begin("all_reduce", t.nbytes());
  if (t.numel() > 0)  // NCCL rejects the null pointer of an empty tensor
    NCCL_OP_CHECK("all_reduce",
                  ncclAllReduce(t.raw(), t.raw(), t.numel(), type, nccl_op(op), comm_.get(), stream_.get()));
  return finish("all_reduce", {t}, blocking);
}

std::unique_ptr<Work> NcclComm::start_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, bool blocking) {
  check_reduce_scatter(in, out, op);
  check_device("reduce_scatter", in, "input");
  check_device("reduce_scatter", out, "output");
  ncclDataType_t type = nccl_type("reduce_scatter", in.dtype());
  DeviceGuard guard(device_);
  begin("reduce_scatter", in.nbytes());
  std::vector<Tensor> keep{in, out};
  if (out.numel() > 0) {
    // NCCL works in place when out is exactly this rank's chunk of in; any other overlap would
    // let it overwrite input it has not read yet, so the input is copied first.
    const void* src = in.raw();
    if (overlaps(in, out) && bytes(out) != bytes(in) + rank_ * out.nbytes()) {
      keep.push_back(stream_copy("reduce_scatter", in));
      src = keep.back().raw();
    }
    NCCL_OP_CHECK("reduce_scatter",
                  ncclReduceScatter(src, out.raw(), out.numel(), type, nccl_op(op), comm_.get(), stream_.get()));
  }
  return finish("reduce_scatter", std::move(keep), blocking);
}

std::unique_ptr<Work> NcclComm::start_all_gather(const Tensor& in, Tensor& out, bool blocking) {
  check_all_gather(in, out);
  check_device("all_gather", in, "input");
  check_device("all_gather", out, "output");
  ncclDataType_t type = nccl_type("all_gather", in.dtype());
  DeviceGuard guard(device_);
  begin("all_gather", out.nbytes());
  std::vector<Tensor> keep{in, out};
  if (in.numel() > 0) {
    // In place when in is exactly this rank's chunk of out (NCCL's rule); other overlaps copy.
    const void* src = in.raw();
    if (overlaps(in, out) && bytes(in) != bytes(out) + rank_ * in.nbytes()) {
      keep.push_back(stream_copy("all_gather", in));
      src = keep.back().raw();
    }
    NCCL_OP_CHECK("all_gather", ncclAllGather(src, out.raw(), in.numel(), type, comm_.get(), stream_.get()));
  }
  return finish("all_gather", std::move(keep), blocking);
}

void NcclComm::broadcast(Tensor& t, int root) {
  if (t.defined() && t.device() != Device::cuda) {
    Tensor d = on_gpu(t);
    broadcast(d, root);
    t.copy_from(d);
    return;
  }
  check_root("broadcast", root);
  check_tensor("broadcast", t, "broadcast");
  check_device("broadcast", t, "broadcast");
  ncclDataType_t type = nccl_type("broadcast", t.dtype());
  DeviceGuard guard(device_);
  begin("broadcast", t.nbytes());
  if (t.numel() > 0)
    NCCL_OP_CHECK("broadcast", ncclBroadcast(t.raw(), t.raw(), t.numel(), type, root, comm_.get(), stream_.get()));
  finish("broadcast", {}, true);
}

// ---- point-to-point ----

std::unique_ptr<Work> NcclComm::start_p2p(const char* op, const Tensor& t, int peer, int tag, bool sending,
                                          bool blocking) {
  check_peer(op, peer, tag, true);
  MT_CHECK(peer != rank_,
           "[{}] {}: peer {} is this rank; NCCL cannot pair a send to oneself with a separate receive (use send_recv, "
           "which issues both together, or copy the tensor)",
           op, where(), peer);
  check_tensor(op, t, sending ? "sent" : "receive");
  check_device(op, t, sending ? "sent" : "receive");
  ncclDataType_t type = nccl_type(op, t.dtype());
  DeviceGuard guard(device_);
  begin(op, t.nbytes());
  // An empty tensor sends nothing; its receiver, holding an empty tensor too, expects nothing.
  if (t.numel() > 0) {
    if (sending)
      NCCL_OP_CHECK(op, ncclSend(t.raw(), t.numel(), type, peer, comm_.get(), stream_.get()));
    else
      NCCL_OP_CHECK(op, ncclRecv(t.raw(), t.numel(), type, peer, comm_.get(), stream_.get()));
  }
  return finish(op, {t}, blocking);
}

std::unique_ptr<Work> NcclComm::send_recv(const Tensor& send, int dst, Tensor& recv, int src) {
  if ((send.defined() && send.device() != Device::cuda) || (recv.defined() && recv.device() != Device::cuda)) {
    Tensor d = on_gpu(recv);
    send_recv(on_gpu(send), dst, d, src)->wait();
    synchronize("send_recv");
    if (recv.defined() && recv.device() != Device::cuda) recv.copy_from(d);
    return std::make_unique<CompletedWork>();
  }
  const char* op = "send_recv";
  bool sending = send.defined(), receiving = recv.defined();
  MT_CHECK(sending || receiving, "[send_recv] {}: both tensors are undefined; pass one to send, to receive, or both",
           where());
  if (sending) {
    check_peer(op, dst, 0, true);
    check_device(op, send, "sent");
  }
  if (receiving) {
    check_peer(op, src, 0, true);
    check_device(op, recv, "receive");
  }
  bool self_send = sending && dst == rank_, self_recv = receiving && src == rank_;
  MT_CHECK(self_send == self_recv,
           "[send_recv] {}: a message to oneself needs both halves in one call (dst == src == {}); got dst {} and src "
           "{}",
           where(), rank_, sending ? dst : -1, receiving ? src : -1);
  MT_CHECK(!self_send || (send.dtype() == recv.dtype() && send.numel() == recv.numel()),
           "[send_recv] {}: sending {} {} elements to oneself into {} {} elements; dtype and count must match", where(),
           send.numel(), dtype_name(send.dtype()), recv.numel(), dtype_name(recv.dtype()));
  ncclDataType_t send_type = sending ? nccl_type(op, send.dtype()) : ncclUint8;
  ncclDataType_t recv_type = receiving ? nccl_type(op, recv.dtype()) : ncclUint8;
  DeviceGuard guard(device_);
  begin(op, (sending ? send.nbytes() : 0) + (receiving ? recv.nbytes() : 0));
  // Inside a group NCCL reports errors at ncclGroupEnd, which must be called whatever happened.
  NCCL_OP_CHECK(op, ncclGroupStart());
  ncclResult_t r = ncclSuccess;
  if (sending && send.numel() > 0) r = ncclSend(send.raw(), send.numel(), send_type, dst, comm_.get(), stream_.get());
  if (r == ncclSuccess && receiving && recv.numel() > 0)
    r = ncclRecv(recv.raw(), recv.numel(), recv_type, src, comm_.get(), stream_.get());
  ncclResult_t end = ncclGroupEnd();
  nccl_check(op, "ncclGroupStart/ncclSend/ncclRecv/ncclGroupEnd", r != ncclSuccess ? r : end, __FILE__, __LINE__);
  return finish(op, {send, recv}, false);
}

// ---- groups ----

void NcclComm::barrier() {
  DeviceGuard guard(device_);
  // Its value does not matter, so no memset (which would run on the default stream, unordered).
  if (!barrier_flag_.defined()) barrier_flag_ = Tensor::empty({1}, DType::i32, Device::cuda);
  begin("barrier", 4);
  void* p = barrier_flag_.raw();
  NCCL_OP_CHECK("barrier", ncclAllReduce(p, p, 1, ncclInt32, ncclSum, comm_.get(), stream_.get()));
  finish("barrier", {}, true);
}

std::unique_ptr<Communicator> NcclComm::split(int color, int key) {
  DeviceGuard guard(device_);
  MT_CHECK(comm_.get() && !comm_.failed(), "[split] {}: the communicator failed or was aborted; it cannot split",
           where());
  ncclComm_t child = nullptr;
  NCCL_OP_CHECK("split", ncclCommSplit(comm_.get(), color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, nullptr));
  if (!child) return nullptr;
  auto part = std::make_unique<NcclComm>(bootstrap_, device_, child, name() + "/split");
  part->set_compute_stream(compute_);
  return part;
}

void NcclComm::abort(int code) {
  CommWatchdog::remove_abort_hook(abort_hook_);
  comm_.abort();
  bootstrap_.abort(code);
  std::_Exit(code);  // a virtual call's [[noreturn]] is not visible to the compiler
}

// ---- creation ----

// What each rank tells the others before NCCL starts: whether it can use its GPU, and which GPU on
// which host, so that a bad device, or two ranks on one GPU (which NCCL refuses), fail on every
// rank with a clear message instead of leaving the others waiting in ncclCommInitRank.
struct GpuClaim {
  char ok = 0;
  char host[55] = {};
  char boot_id[40] = {};  // tells apart hosts (containers) that share a name
  char bus_id[32] = {};
};
static_assert(sizeof(GpuClaim) == 128 && std::is_trivially_copyable_v<GpuClaim>);

// This rank's claim; problem says why it cannot use device (empty when it can).
GpuClaim claim_gpu(int device, std::string& problem) {
  GpuClaim claim;
  int count = cuda_device_count();
  if (count == 0) {
    problem = "no CUDA device is visible (check the driver, and CUDA_VISIBLE_DEVICES)";
  } else if (device < 0 || device >= count) {
    problem = fmt::format("device {} is not one of the {} visible CUDA devices (0..{})", device, count, count - 1);
  } else {
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaDeviceGetPCIBusId(claim.bus_id, sizeof claim.bus_id - 1, device);
    if (e != cudaSuccess) problem = fmt::format("cannot use CUDA device {}: {}", device, cudaGetErrorString(e));
  }
  claim.ok = problem.empty();
  (void)gethostname(claim.host, sizeof claim.host - 1);
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  boot.read(claim.boot_id, sizeof claim.boot_id - 1);
  return claim;
}

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<NcclCommunicator> make_nccl_communicator(Communicator& bootstrap, int device) {
  const int me = bootstrap.rank(), size = bootstrap.size();
  const std::string where = fmt::format("{} rank {} of {}", bootstrap.name(), me, size);

  std::string problem;
  GpuClaim mine = claim_gpu(device, problem);
  Tensor own = Tensor::empty({static_cast<int64_t>(sizeof(GpuClaim))}, DType::u8);
  Tensor claims = Tensor::empty({static_cast<int64_t>(sizeof(GpuClaim)) * size}, DType::u8);
  std::memcpy(own.raw(), &mine, sizeof mine);
  bootstrap.all_gather(own, claims);
  MT_CHECK(problem.empty(), "[nccl] {}: {}; no NCCL communicator was made", where, problem);
  std::vector<GpuClaim> all(size);
  std::memcpy(all.data(), claims.raw(), claims.nbytes());
  for (int r = 0; r < size; ++r)
    MT_CHECK(all[r].ok,
             "[nccl] {}: rank {} cannot use its GPU (its own message says why); no NCCL communicator was made", where,
             r);
  std::map<std::string, int> owner;  // host, boot and bus id -> first rank that chose that GPU
  for (int r = 0; r < size; ++r) {
    const GpuClaim& c = all[r];
    auto [it, fresh] = owner.emplace(fmt::format("{}|{}|{}", c.host, c.boot_id, c.bus_id), r);
    MT_CHECK(fresh,
             "[nccl] {}: ranks {} and {} both chose GPU {} on host {}; NCCL needs a GPU of its own for every rank "
             "of a communicator (start at most as many ranks per host as it has GPUs, with device = local rank)",
             where, it->second, r, c.bus_id, c.host);
  }

  // Rank 0 makes the unique id; a leading status byte tells the others whether it could.
  Tensor id = Tensor::empty({1 + static_cast<int64_t>(sizeof(ncclUniqueId))}, DType::u8);
  ncclUniqueId uid{};
  ncclResult_t made = ncclSuccess;
  if (me == 0) {
    made = ncclGetUniqueId(&uid);
    bytes(id)[0] = made == ncclSuccess;
    std::memcpy(bytes(id) + 1, &uid, sizeof uid);
  }
  bootstrap.broadcast(id, 0);
  if (made != ncclSuccess) throw_nccl_error(__FILE__, __LINE__, "ncclGetUniqueId", made);
  MT_CHECK(bytes(id)[0] == 1, "[nccl] {}: rank 0 could not make NCCL's unique id (its own message says why)", where);
  std::memcpy(&uid, bytes(id) + 1, sizeof uid);

  ncclComm_t comm = nullptr;
  NCCL_CHECK(ncclCommInitRank(&comm, size, uid, me));
  return std::make_unique<NcclComm>(bootstrap, device, comm, "nccl");
}

}  // namespace meshtrain
