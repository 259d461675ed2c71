// MpiCommunicator: the Communicator over an MPI communicator, moving host tensors (device tensors
// are staged through host memory). Collectives map one-to-one onto MPI's, blocking for the plain
// methods and non-blocking (MPI_I*) for the _async ones; bf16, u16 and u8 sums use MPI ops of our own.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

#include "core/communicator.h"

namespace meshtrain {

class MpiCommunicator final : public Communicator {
 public:
  /// Duplicates comm (so our messages never meet the caller's) and owns the duplicate. MPI must be
  /// initialised (see MpiRuntime); collective over comm.
  explicit MpiCommunicator(MPI_Comm comm, std::string name = "mpi");
  /// Frees the communicator and its ops; skipped when MPI is already finalized. Unfinished Work from
  /// this communicator must be gone before it is.
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  /// The MPI communicator underneath, for MPI-IO and other libraries that speak MPI.
  MPI_Comm native() const { return comm_; }
  /// Most elements one MPI call moves (default INT_MAX, MPI's count limit); longer tensors go in
  /// several calls. Lowering it lets tests exercise that path with small tensors. Not collective,
  /// but every rank must use the same value; split() passes it on.
  void set_max_message_elements(int64_t n);
  int64_t max_message_elements() const { return max_message_elements_; }

  void all_reduce(Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  std::unique_ptr<Work> all_gather_async(const Tensor& in, Tensor& out) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag) override;
  void recv(Tensor& t, int src, int tag) override;
  /// Sending to oneself is allowed here (pair it with an irecv from oneself).
  std::unique_ptr<Work> isend(const Tensor& t, int dst, int tag) override;
  std::unique_ptr<Work> irecv(Tensor& t, int src, int tag) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  /// MPI_Abort on this communicator (normally ends the whole job).
  [[noreturn]] void abort(int code) override;

 private:
  struct Adopt {};
  /// Wraps an already-created communicator, taking ownership (used by split).
  MpiCommunicator(Adopt, MPI_Comm comm, std::string name, int64_t max_message_elements);
  void init_handles();
  void free_handles() noexcept;
  MPI_Datatype mpi_type(DType dt) const;
  MPI_Op mpi_op(DType dt, ReduceOp op) const;
  // One code path per operation: blocking calls run it with blocking = true and wait at once.
  std::unique_ptr<Work> start_all_reduce(Tensor& t, ReduceOp op, bool blocking);
  std::unique_ptr<Work> start_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, bool blocking);
  std::unique_ptr<Work> start_all_gather(const Tensor& in, Tensor& out, bool blocking);
  std::unique_ptr<Work> start_send(const Tensor& t, int dst, int tag, bool blocking);
  std::unique_ptr<Work> start_recv(Tensor& t, int src, int tag, bool blocking);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  int tag_ub_ = 32767;  // MPI_TAG_UB of comm_
  int64_t max_message_elements_;
  MPI_Datatype bf16_type_ = MPI_DATATYPE_NULL;  // two bytes that our ops read as bfloat16
  MPI_Op bf16_sum_ = MPI_OP_NULL, bf16_max_ = MPI_OP_NULL;
  MPI_Op u16_sum_ = MPI_OP_NULL, u8_sum_ = MPI_OP_NULL;  // wrapping sums (see mpi_op)
};

}  // namespace meshtrain
