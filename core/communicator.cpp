// Argument checks shared by every Communicator implementation, so a misuse reads the same whether
// it happens over MPI, NCCL or on a single rank.
#include "core/communicator.h"

namespace meshtrain {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      return "max";
  }
  return "?";
}

std::string Communicator::where() const { return fmt::format("{} rank {} of {}", name_, rank(), size()); }

void Communicator::check_tensor(const char* op, const Tensor& t, const char* role) const {
  MT_CHECK(t.defined(), "[{}] {}: the {} tensor is undefined (allocate it before the call)", op, where(), role);
}

void Communicator::check_reduce(const char* op, const Tensor& t, ReduceOp reduce) const {
  check_tensor(op, t, "reduced");
  bool floating = t.dtype() == DType::f32 || t.dtype() == DType::bf16;
  MT_CHECK(reduce != ReduceOp::avg || floating,
           "[{}] {}: avg needs a floating-point tensor (f32 or bf16), got {}; reduce with sum instead", op, where(),
           dtype_name(t.dtype()));
}

void Communicator::check_reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp reduce) const {
  check_reduce("reduce_scatter", in, reduce);
  check_tensor("reduce_scatter", out, "output");
  MT_CHECK(in.dtype() == out.dtype(), "[reduce_scatter] {}: input is {} but output is {}; they must match", where(),
           dtype_name(in.dtype()), dtype_name(out.dtype()));
  MT_CHECK(in.numel() == out.numel() * size(),
           "[reduce_scatter] {}: input has {} elements but must have output's {} x {} ranks = {}", where(), in.numel(),
           out.numel(), size(), out.numel() * size());
}

void Communicator::check_all_gather(const Tensor& in, const Tensor& out) const {
  check_tensor("all_gather", in, "input");
  check_tensor("all_gather", out, "output");
  MT_CHECK(in.dtype() == out.dtype(), "[all_gather] {}: input is {} but output is {}; they must match", where(),
           dtype_name(in.dtype()), dtype_name(out.dtype()));
  MT_CHECK(out.numel() == in.numel() * size(),
           "[all_gather] {}: output has {} elements but must have input's {} x {} ranks = {}", where(), out.numel(),
           in.numel(), size(), in.numel() * size());
}

void Communicator::check_root(const char* op, int root) const {
  MT_CHECK(root >= 0 && root < size(), "[{}] {}: root {} is not a rank of this communicator (0..{})", op, where(), root,
           size() - 1);
}

void Communicator::check_peer(const char* op, int peer, int tag, bool allow_self) const {
  MT_CHECK(peer >= 0 && peer < size(), "[{}] {}: peer {} is not a rank of this communicator (0..{})", op, where(), peer,
           size() - 1);
  MT_CHECK(allow_self || peer != rank(),
           "[{}] {}: peer {} is this rank; a blocking send or recv to oneself would deadlock (use isend/irecv)", op,
           where(), peer);
  MT_CHECK(tag >= 0, "[{}] {}: tag {} is negative; tags must be >= 0", op, where(), tag);
}

}  // namespace meshtrain
