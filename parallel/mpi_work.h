// MpiWork: the Work of MpiCommunicator. It owns the MPI requests of one operation, keeps the
// tensors they read and write alive, and once every request is complete checks receive counts and
// runs the operation's finishing steps (avg's division, unpacking, copies back to the device).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/watchdog.h"
#include "parallel/mpi_runtime.h"

namespace meshtrain {

// A set of MPI requests plus what to do once all are complete, in order.
class MpiWork final : public Work {
 public:
  /// op names the operation in messages; type is the element type, for counting received elements.
  MpiWork(const char* op, std::string where, MPI_Datatype type) : op_(op), where_(std::move(where)), type_(type) {}
  ~MpiWork() override {
    if (done_) return;
    try {
      wait();
    } catch (...) {
      // Destructors never throw; the error was for whoever waited, and nobody did.
    }
  }
  /// A slot for one request; expect >= 0 makes completion check that a receive got that many elements.
  MPI_Request* add_request(int expect = -1) {
    expect_.push_back(expect);
    return &requests_.emplace_back(MPI_REQUEST_NULL);
  }
  void keep(const Tensor& t) { keep_.push_back(t); }
  void then(std::function<void()> step) { steps_.push_back(std::move(step)); }

  void wait() override {
    if (done_) return;
    std::vector<MPI_Status> statuses(requests_.size());
    std::vector<int> codes(requests_.size());
    // One MPI_Wait per request rather than MPI_Waitall: Open MPI 4.1's MPI_Waitall never returns
    // when a receive is truncated while MPI runs with thread support (MPI_THREAD_FUNNELED).
    CommWatchdog::Guard watch(op_, [&] { return where_; });
    for (size_t i = 0; i < requests_.size(); ++i) codes[i] = MPI_Wait(&requests_[i], &statuses[i]);
    finish(codes, statuses);
  }

  bool test() override {
    if (done_) return true;
    int flag = 0;
    std::vector<MPI_Status> statuses(requests_.size());
    int rc = requests_.empty()
                 ? MPI_SUCCESS
                 : MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag, statuses.data());
    if (rc == MPI_SUCCESS && !flag && !requests_.empty()) return false;
    std::vector<int> codes(requests_.size(), rc);
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = rc == MPI_ERR_IN_STATUS ? statuses[i].MPI_ERROR : rc;
    finish(codes, statuses);
    return true;
  }

 private:
  void finish(const std::vector<int>& codes, std::vector<MPI_Status>& statuses) {
    done_ = true;  // even if a step throws: the requests are complete and must not be waited on again
    for (size_t i = 0; i < statuses.size(); ++i) {
      int error_class = MPI_SUCCESS;
      if (codes[i] != MPI_SUCCESS) MPI_Error_class(codes[i], &error_class);
      MT_CHECK(error_class != MPI_ERR_TRUNCATE,
               "[{}] {}: a message from rank {} (tag {}) is longer than the {} elements expected; sender and "
               "receiver must agree on the element count",
               op_, where_, statuses[i].MPI_SOURCE, statuses[i].MPI_TAG, expect_[i]);
      if (codes[i] != MPI_SUCCESS) {
        throw_mpi_error(__FILE__, __LINE__, fmt::format("[{}] {}: request {} of {}", op_, where_, i, codes.size()),
                        codes[i]);
      }
      if (expect_[i] < 0) continue;
      int count = 0;
      MPI_Get_count(&statuses[i], type_, &count);
      MT_CHECK(count == expect_[i],
               "[{}] {}: received {} elements from rank {} (tag {}) into a tensor of {}; sender and receiver must "
               "agree on the element count",
               op_, where_, count, statuses[i].MPI_SOURCE, statuses[i].MPI_TAG, expect_[i]);
    }
    for (auto& step : steps_) step();
    keep_.clear();
  }

  const char* op_;
  std::string where_;
  MPI_Datatype type_;
  std::vector<MPI_Request> requests_;
  std::vector<int> expect_;
  std::vector<Tensor> keep_;  // buffers MPI is reading or writing stay alive until completion
  std::vector<std::function<void()>> steps_;
  bool done_ = false;
};

}  // namespace meshtrain
