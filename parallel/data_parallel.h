// Data parallelism over a Communicator: gradients live in the model's one flat buffer, cut into
// buckets; each bucket's reduction starts as soon as backward has made its gradients final and runs
// while backward goes on (non-blocking collectives, driven forward each time the model reports more
// final gradients). ZeRO-1 (zero = 1) reduce-scatters instead, keeps AdamW moments only for this
// rank's chunk of every bucket, updates that chunk, and all-gathers the parameters back.
// Gradients, moments and the update live on the model's device; the communicator moves them there
// (NCCL) or stages them through host memory (MPI).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/optimizer.h"
#include "core/communicator.h"

namespace meshtrain {

class Gpt;

struct DataParallelConfig {
  int zero = 0;            // 0: all-reduce gradients; 1: ZeRO-1 sharded optimizer state
  double bucket_mb = 4.0;  // bucket size in MiB of fp32 gradients
};

/// When a bucket's reduction was started and found complete (seconds, now_seconds() clock).
struct BucketTiming {
  int64_t begin = 0, end = 0;  // flat element range
  double launched = 0, completed = 0;
};

class DataParallel {
 public:
  /// pp, when the model is a pipeline stage, is the group of stages the gradient norm sums over.
  DataParallel(Gpt& model, Communicator& dp, DataParallelConfig cfg, AdamWConfig opt_cfg, Communicator* pp = nullptr);
  ~DataParallel();

  /// Call before the backward pass of a step's last micro-batch: buckets then start reducing as
  /// their gradients become final.
  void arm();
  /// Starts what is left, waits for every bucket; gradients (zero 0) or this rank's chunks (zero 1)
  /// are then averaged over the group.
  void finish();
  /// Global-norm clipping and AdamW (on this rank's chunks under ZeRO-1, then all-gather of the
  /// parameters). Returns the global gradient norm before clipping.
  float step(float lr);
  /// step() queued on the model's device without waiting for it (the norm is then opt.last_norm()).
  /// Waits on the host only where ranks must agree (the norm over tp / pp / ZeRO-1 ranks) and for
  /// ZeRO-1's all-gather, so with every group of size 1 it is graph-capturable.
  void queue_step(float lr);
  /// Sets the model's parameters and the optimizer's master weights (bf16) from host floats.
  void set_params(const float* host);
  /// The fp32 weights (master weights of a bf16 model, gathered over ZeRO-1 ranks) into host.
  void get_params(Tensor& host);

  AdamW& optimizer() { return *opt_; }
  /// Whole-buffer AdamW moments on every rank (gathered from the shards under ZeRO-1).
  void gather_moments(Tensor& m, Tensor& v);
  /// Takes this rank's part of whole-buffer moments (as written by gather_moments).
  void scatter_moments(const Tensor& m, const Tensor& v);

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  const std::vector<BucketTiming>& last_timings() const { return timings_; }
  /// Seconds spent on communication that did not overlap compute since the last call: MPI work
  /// inside backward's hooks (host time), and the time the device's stream waited in finish() and
  /// for the norm's all-reduces and ZeRO-1's parameter all-gather (its timeline: CUDA events on a
  /// GPU). Call once the device has finished the step; restarts from zero.
  double take_exposed_comm_seconds() { return std::exchange(exposed_, 0.0) + timer_.take(); }
  /// Bytes the data-parallel collectives moved since the last call, as (payload, bus): bus bytes
  /// weigh all-reduces by 2(n - 1)/n and reduce-scatters / all-gathers by (n - 1)/n (nccl-tests).
  std::pair<double, double> take_bytes() { return std::exchange(bytes_, {0.0, 0.0}); }
  /// The device intervals behind it (a step captured as a CUDA graph keeps them for its replays).
  DeviceTimer& timer() { return timer_; }
  int zero() const { return cfg_.zero; }

 private:
  struct Bucket {
    int64_t begin, end;
    std::unique_ptr<Work> work;
    bool launched = false;
  };
  void on_ready(int64_t ready_from);
  void launch(size_t i);
  int64_t chunk_begin(const Bucket& b) const;
  int64_t chunk_len(const Bucket& b) const { return (b.end - b.begin) / comm_.size(); }

  Gpt& model_;
  Communicator& comm_;
  Communicator* pp_;
  DataParallelConfig cfg_;
  std::vector<Bucket> buckets_;  // ascending offsets; launched from the last
  std::vector<BucketTiming> timings_;
  Tensor shard_;  // zero 1: reduce-scatter output, one chunk per bucket back to back
  std::unique_ptr<AdamW> opt_;
  bool armed_ = false;
  double exposed_ = 0.0;  // host time in backward's hooks
  DeviceTimer timer_;
  std::pair<double, double> bytes_{0.0, 0.0};
};

}  // namespace meshtrain
