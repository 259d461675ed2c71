// The Communicator interface: what the model and training loop use to talk to other ranks. Shaped
// like PyTorch c10d's Backend: rank and size, one method per collective, an async Work handle, and
// named errors. MpiCommunicator (mpi_communicator.h) moves host tensors over MPI, a later
// NcclCommunicator GPU tensors; LocalCommunicator is the size-1 case every single-process run uses.
#pragma once

#include <memory>
#include <string>

#include "core/tensor.h"

namespace meshtrain {

/// How a reduction combines ranks. avg = sum then divide by size(), floating dtypes (f32, bf16) only.
/// Integer sums wrap like the C++ unsigned/two's-complement arithmetic of their dtype.
enum class ReduceOp { sum, avg, max };

/// "sum", "avg" or "max".
const char* reduce_op_name(ReduceOp op);

/// A handle on an operation in flight. The tensors it touches must stay untouched until it
/// completes; results (and errors) appear at wait() or at the test() that returns true.
class Work {
 public:
  /// Implementations wait for an unfinished operation here, swallowing errors: a Work never leaves
  /// a request dangling.
  virtual ~Work() = default;
  /// Blocks until the operation is complete; throws meshtrain::Error if it failed.
  virtual void wait() = 0;
  /// True once complete (then as wait() would have returned). Also drives progress: MPI moves
  /// non-blocking collectives forward only inside MPI calls, so poll this while overlapping compute.
  virtual bool test() = 0;
};

/// A Work that was already complete when it was returned (size-1 communicators, blocking fallbacks).
class CompletedWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

/// A group of ranks. Every method is collective over the group unless it says otherwise; every
/// method throws meshtrain::Error with an "[op] <name> rank r of n: ..." message on misuse.
/// Tensors may live on any device an implementation supports; dtype and element count come from
/// the tensors (shapes do not matter, only element counts).
class Communicator {
 public:
  virtual ~Communicator() = default;
  /// This rank's index in the group, 0 <= rank() < size(). Not collective.
  virtual int rank() const = 0;
  /// Number of ranks in the group. Not collective.
  virtual int size() const = 0;
  /// A label for messages ("mpi world", "mpi world/dp", "local"). Not collective.
  const std::string& name() const { return name_; }
  /// Renames this communicator (the Mesh names its axes). Not collective.
  void set_name(std::string name) { name_ = std::move(name); }

  /// Reduces t in place over all ranks; every rank ends with the result.
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) = 0;
  /// in holds size() chunks of out.numel() elements; rank r receives the reduction of chunk r.
  /// in and out may overlap (out = chunk r of in, as ZeRO does), at the cost of a copy.
  virtual void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  /// out = every rank's in, concatenated in rank order (out.numel() == in.numel() * size()).
  /// in may be this rank's chunk of out (in-place all-gather).
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  virtual std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) = 0;
  /// Copies root's t into every rank's t.
  virtual void broadcast(Tensor& t, int root) = 0;

  /// Point-to-point (not collective): sends t to rank dst; the receiver's tensor must have the
  /// same dtype and element count. Messages between two ranks with one tag arrive in order.
  virtual void send(const Tensor& t, int dst, int tag) = 0;
  /// Receives into t from rank src a message sent with the same tag.
  virtual void recv(Tensor& t, int src, int tag) = 0;
  virtual std::unique_ptr<Work> isend(const Tensor& t, int dst, int tag) = 0;
  virtual std::unique_ptr<Work> irecv(Tensor& t, int src, int tag) = 0;

  /// Returns once every rank has called it.
  virtual void barrier() = 0;
  /// Ranks with the same color >= 0 form a new communicator ordered by (key, rank); a rank whose
  /// color is negative joins none and gets nullptr.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  /// Ends every process of the job with the exit code (MPI_Abort); for fatal errors on one rank
  /// that would otherwise leave the others hanging in a collective. Not collective.
  [[noreturn]] virtual void abort(int code) = 0;
  /// True when operations run on the GPU's streams, ordered after the compute stream and before
  /// what follows a Work's wait() without the host waiting (NCCL): they then progress by themselves
  /// and can be captured in a CUDA graph. False for host-driven ones (MPI), which progress only
  /// inside their calls. Not collective.
  virtual bool on_device_streams() const { return false; }

 protected:
  explicit Communicator(std::string name) : name_(std::move(name)) {}

  // Argument checks every implementation shares, so the messages are the same everywhere.
  /// "<name> rank r of n", the part of every message that says where it happened.
  std::string where() const;
  void check_tensor(const char* op, const Tensor& t, const char* role) const;
  void check_reduce(const char* op, const Tensor& t, ReduceOp reduce) const;
  void check_reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp reduce) const;
  void check_all_gather(const Tensor& in, const Tensor& out) const;
  void check_root(const char* op, int root) const;
  /// peer must be another rank (or this one, when allow_self) and tag non-negative.
  void check_peer(const char* op, int peer, int tag, bool allow_self) const;

 private:
  std::string name_;
};

/// A communicator of one rank: reductions leave tensors as they are, gathers and scatters copy,
/// and point-to-point calls throw (there is no other rank).
class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator() : Communicator("local") {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag) override;
  void recv(Tensor& t, int src, int tag) override;
  std::unique_ptr<Work> isend(const Tensor& t, int dst, int tag) override;
  std::unique_ptr<Work> irecv(Tensor& t, int src, int tag) override;
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
  /// Flushes stdio and ends this process with code (no destructors run, as with MPI_Abort).
  [[noreturn]] void abort(int code) override;
};

}  // namespace meshtrain
