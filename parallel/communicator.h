// The Communicator interface: what the model and training loop use to talk to other ranks. The
// parallel layer speaks only to this interface; MPI and NCCL implementations come with the parallel
// layer, and LocalCommunicator is the size-1 case every single-process run uses.
#pragma once

#include <memory>

#include "core/tensor.h"

namespace meshtrain {

enum class ReduceOp { sum, avg, max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Reduces t in place across all ranks.
  virtual void all_reduce(Tensor& t, ReduceOp op) = 0;
  /// Copies root's t into every rank's t.
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  /// Ranks with the same color form a new communicator, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

/// A communicator of one rank: collectives leave tensors as they are.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(Tensor& t, ReduceOp op) override;
  void broadcast(Tensor& t, int root) override;
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
};

}  // namespace meshtrain
