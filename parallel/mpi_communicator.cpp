// MpiCommunicator. Each operation is one code path: it stages device tensors through host memory,
// cuts messages longer than max_message_elements_ into several MPI calls (MPI counts are ints), and
// issues blocking or non-blocking MPI calls into an MpiWork that later finishes the job (avg's
// division, unpacking chunked gathers, copying staged results back to the device).
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "core/watchdog.h"
#include "parallel/mpi_runtime.h"
#include "parallel/mpi_work.h"

namespace meshtrain {

// MPI_CHECK for the calls an operation makes: the message names the operation and this rank.
#define MPI_OP_CHECK(op, call)                                                                          \
  do {                                                                                                  \
    CommWatchdog::Guard mt_watch_(op, [&] { return where(); });                                         \
    int mt_mpi_err_ = (call);                                                                           \
    if (mt_mpi_err_ != MPI_SUCCESS)                                                                     \
      throw_mpi_error(__FILE__, __LINE__, fmt::format("[{}] {}: {}", op, where(), #call), mt_mpi_err_); \
  } while (0)

namespace {

// bf16 reductions: MPI has no bfloat16, so ops of our own widen to float, combine, round back.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = float_to_bf16(bf16_to_float(a[i]) + bf16_to_float(b[i]));
}

void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    float x = bf16_to_float(a[i]), y = bf16_to_float(b[i]);
    if (x > y || x != x) b[i] = a[i];  // a NaN on any rank wins, so divergence is visible everywhere
  }
}

// Sums that wrap around, as C++ unsigned arithmetic does. Open MPI 4.1's AVX reductions saturate
// 8- and 16-bit sums instead (open-mpi/ompi#8045, closed as won't fix), so MPI_SUM is not used.
template <class T>
void wrapping_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const T*>(in);
  auto* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = static_cast<T>(a[i] + b[i]);
}

char* bytes(const Tensor& t) { return static_cast<char*>(t.raw()); }

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  return bytes(a) < bytes(b) + b.nbytes() && bytes(b) < bytes(a) + a.nbytes();
}

// Host tensor holding t's values: t itself on the CPU, else a staged copy.
Tensor host_copy(const Tensor& t) { return t.on(Device::cpu); }

// Host tensor to receive into for t: t itself on the CPU, else a buffer copied back by copy_back.
Tensor host_target(const Tensor& t) {
  return t.device() == Device::cpu ? t : Tensor::empty(t.shape(), t.dtype(), Device::cpu);
}

void copy_back(MpiWork& work, const Tensor& t, const Tensor& h) {
  if (t.device() != Device::cpu) work.then([dst = Tensor(t), h]() mutable { dst.copy_from(h); });
}

void divide(const Tensor& t, int by) {
  if (t.dtype() == DType::f32) {
    float* p = t.f32();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] /= static_cast<float>(by);
  } else {  // bf16: check_reduce admits avg only for floating dtypes
    auto* p = static_cast<uint16_t*>(t.raw());
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = float_to_bf16(bf16_to_float(p[i]) / static_cast<float>(by));
  }
}

// Calls f(first, count) for consecutive pieces of n elements of at most max each; once with count
// 0 when n is 0, so an empty message still matches its receive.
template <class F>
void for_each_chunk(int64_t n, int64_t max, F&& f) {
  if (n == 0) return f(int64_t{0}, 0);
  for (int64_t first = 0; first < n; first += max) f(first, static_cast<int>(std::min(max, n - first)));
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name)
    : Communicator(std::move(name)), max_message_elements_(INT_MAX) {
  int initialized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  MT_CHECK(initialized, "[mpi] MpiCommunicator needs MPI initialised first: create an MpiRuntime");
  MT_CHECK(comm != MPI_COMM_NULL, "[mpi] MpiCommunicator given MPI_COMM_NULL");
  MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  init_handles();
}

MpiCommunicator::MpiCommunicator(Adopt, MPI_Comm comm, std::string name, int64_t max_message_elements)
    : Communicator(std::move(name)), comm_(comm), max_message_elements_(max_message_elements) {
  init_handles();
}

void MpiCommunicator::init_handles() {
  try {
    // Errors come back as codes that MPI_CHECK turns into exceptions, instead of killing the job.
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
    int* tag_ub = nullptr;
    int flag = 0;
    MPI_CHECK(MPI_Comm_get_attr(comm_, MPI_TAG_UB, &tag_ub, &flag));
    if (flag) tag_ub_ = *tag_ub;
    MPI_CHECK(MPI_Type_contiguous(2, MPI_BYTE, &bf16_type_));
    MPI_CHECK(MPI_Type_commit(&bf16_type_));
    MPI_CHECK(MPI_Op_create(&bf16_sum, 1, &bf16_sum_));
    MPI_CHECK(MPI_Op_create(&bf16_max, 1, &bf16_max_));
    MPI_CHECK(MPI_Op_create(&wrapping_sum<uint16_t>, 1, &u16_sum_));
    MPI_CHECK(MPI_Op_create(&wrapping_sum<uint8_t>, 1, &u8_sum_));
  } catch (...) {
    free_handles();  // the constructor failed, so no destructor will free what we made
    throw;
  }
}

MpiCommunicator::~MpiCommunicator() { free_handles(); }

void MpiCommunicator::free_handles() noexcept {
  int finalized = 1;
  if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized) return;
  if (bf16_sum_ != MPI_OP_NULL) MPI_Op_free(&bf16_sum_);
  if (bf16_max_ != MPI_OP_NULL) MPI_Op_free(&bf16_max_);
  if (u16_sum_ != MPI_OP_NULL) MPI_Op_free(&u16_sum_);
  if (u8_sum_ != MPI_OP_NULL) MPI_Op_free(&u8_sum_);
  if (bf16_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&bf16_type_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::set_max_message_elements(int64_t n) {
  MT_CHECK(n >= 1 && n <= INT_MAX, "[mpi] {}: max_message_elements {} must be in 1..{}", where(), n, INT_MAX);
  max_message_elements_ = n;
}

MPI_Datatype MpiCommunicator::mpi_type(DType dt) const {
  switch (dt) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::bf16:
      return bf16_type_;
    case DType::i32:
      return MPI_INT32_T;
    case DType::u16:
      return MPI_UINT16_T;
    case DType::u8:
      return MPI_UINT8_T;
  }
  MT_FAIL("[mpi] {}: no MPI type for dtype {}", where(), static_cast<int>(dt));
}

MPI_Op MpiCommunicator::mpi_op(DType dt, ReduceOp op) const {
  if (op == ReduceOp::max) return dt == DType::bf16 ? bf16_max_ : MPI_MAX;
  switch (dt) {  // sum, and avg, which divides after the sum
    case DType::bf16:
      return bf16_sum_;
    case DType::u16:
      return u16_sum_;
    case DType::u8:
      return u8_sum_;
    default:
      return MPI_SUM;
  }
}

// ---- collectives ----

std::unique_ptr<Work> MpiCommunicator::start_all_reduce(Tensor& t, ReduceOp op, bool blocking) {
  check_reduce("all_reduce", t, op);
  MPI_Datatype type = mpi_type(t.dtype());
  MPI_Op mop = mpi_op(t.dtype(), op);
  auto work = std::make_unique<MpiWork>("all_reduce", where(), type);
  Tensor h = host_copy(t);
  work->keep(t);
  work->keep(h);
  size_t es = dtype_size(t.dtype());
  for_each_chunk(h.numel(), max_message_elements_, [&](int64_t first, int n) {
    char* p = bytes(h) + first * es;
    if (blocking)
      MPI_OP_CHECK("all_reduce", MPI_Allreduce(MPI_IN_PLACE, p, n, type, mop, comm_));
    else
      MPI_OP_CHECK("all_reduce", MPI_Iallreduce(MPI_IN_PLACE, p, n, type, mop, comm_, work->add_request()));
  });
  if (op == ReduceOp::avg) work->then([h, n = size_] { divide(h, n); });
  copy_back(*work, t, h);
  if (blocking) work->wait();
  return work;
}

std::unique_ptr<Work> MpiCommunicator::start_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, bool blocking) {
  check_reduce_scatter(in, out, op);
  MPI_Datatype type = mpi_type(in.dtype());
  MPI_Op mop = mpi_op(in.dtype(), op);
  auto work = std::make_unique<MpiWork>("reduce_scatter", where(), type);
  Tensor hin = host_copy(in), hout = host_target(out);
  for (const Tensor& t : {in, out, hin, hout}) work->keep(t);
  size_t es = dtype_size(in.dtype());
  int64_t n = out.numel();
  // MPI reads chunk r of the input at r * count, so a piece of each chunk has to be packed together
  // when the chunks travel in several calls; packing also breaks any aliasing of input and output.
  bool pack = n > max_message_elements_ || overlaps(hin, hout);
  for_each_chunk(n, max_message_elements_, [&](int64_t first, int len) {
    const char* src = bytes(hin);
    if (pack) {
      Tensor packed = Tensor::empty({static_cast<int64_t>(len) * size_}, in.dtype());
      for (int r = 0; r < size_; ++r)
        std::memcpy(bytes(packed) + int64_t{r} * len * es, bytes(hin) + (r * n + first) * es, len * es);
      work->keep(packed);
      src = bytes(packed);
    }
    char* dst = bytes(hout) + first * es;
    // Blocking: MPI_Reduce_scatter with equal counts, which Open MPI 4.1 runs 2-3x faster than the
    // equivalent MPI_Reduce_scatter_block (measured with 2 ranks, 64Ki-4Mi floats).
    std::vector<int> counts(blocking ? size_ : 0, len);
    if (blocking)
      MPI_OP_CHECK("reduce_scatter", MPI_Reduce_scatter(src, dst, counts.data(), type, mop, comm_));
    else
      MPI_OP_CHECK("reduce_scatter", MPI_Ireduce_scatter_block(src, dst, len, type, mop, comm_, work->add_request()));
  });
  if (op == ReduceOp::avg) work->then([hout, n = size_] { divide(hout, n); });
  copy_back(*work, out, hout);
  if (blocking) work->wait();
  return work;
}

std::unique_ptr<Work> MpiCommunicator::start_all_gather(const Tensor& in, Tensor& out, bool blocking) {
  check_all_gather(in, out);
  MPI_Datatype type = mpi_type(in.dtype());
  auto work = std::make_unique<MpiWork>("all_gather", where(), type);
  Tensor hin = host_copy(in), hout = host_target(out);
  for (const Tensor& t : {in, out, hin, hout}) work->keep(t);
  size_t es = dtype_size(in.dtype());
  int64_t n = in.numel();
  if (n <= max_message_elements_) {
    const void* src = hin.raw();
    if (overlaps(hin, hout)) {
      if (bytes(hin) == bytes(hout) + rank_ * n * es) {
        src = MPI_IN_PLACE;  // in is already this rank's chunk of out
      } else {
        Tensor copy = Tensor::empty(hin.shape(), hin.dtype());
        copy.copy_from(hin);
        work->keep(copy);
        src = copy.raw();
      }
    }
    int count = static_cast<int>(n);
    if (blocking)
      MPI_OP_CHECK("all_gather", MPI_Allgather(src, count, type, hout.raw(), count, type, comm_));
    else
      MPI_OP_CHECK("all_gather", MPI_Iallgather(src, count, type, hout.raw(), count, type, comm_, work->add_request()));
  } else {
    // Rank r's piece [first, first + len) belongs at r * n + first in out: gather the pieces side by
    // side, then move them into place once every call is complete (out is not touched before, so
    // an in that aliases out is still intact while it is being sent).
    for_each_chunk(n, max_message_elements_, [&](int64_t first, int len) {
      Tensor gathered = Tensor::empty({static_cast<int64_t>(len) * size_}, in.dtype());
      work->keep(gathered);
      const char* src = bytes(hin) + first * es;
      if (blocking)
        MPI_OP_CHECK("all_gather", MPI_Allgather(src, len, type, gathered.raw(), len, type, comm_));
      else
        MPI_OP_CHECK("all_gather",
                     MPI_Iallgather(src, len, type, gathered.raw(), len, type, comm_, work->add_request()));
      work->then([=, size = size_] {
        for (int r = 0; r < size; ++r)
          std::memcpy(bytes(hout) + (r * n + first) * es, bytes(gathered) + int64_t{r} * len * es, len * es);
      });
    });
  }
  copy_back(*work, out, hout);
  if (blocking) work->wait();
  return work;
}

void MpiCommunicator::all_reduce(Tensor& t, ReduceOp op) { start_all_reduce(t, op, true); }
std::unique_ptr<Work> MpiCommunicator::all_reduce_async(Tensor& t, ReduceOp op) {
  return start_all_reduce(t, op, false);
}
void MpiCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  start_reduce_scatter(in, out, op, true);
}
std::unique_ptr<Work> MpiCommunicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  return start_reduce_scatter(in, out, op, false);
}
void MpiCommunicator::all_gather(const Tensor& in, Tensor& out) { start_all_gather(in, out, true); }
std::unique_ptr<Work> MpiCommunicator::all_gather_async(const Tensor& in, Tensor& out) {
  return start_all_gather(in, out, false);
}

void MpiCommunicator::broadcast(Tensor& t, int root) {
  check_root("broadcast", root);
  check_tensor("broadcast", t, "broadcast");
  MPI_Datatype type = mpi_type(t.dtype());
  Tensor h = host_copy(t);
  size_t es = dtype_size(t.dtype());
  for_each_chunk(h.numel(), max_message_elements_, [&](int64_t first, int n) {
    MPI_OP_CHECK("broadcast", MPI_Bcast(bytes(h) + first * es, n, type, root, comm_));
  });
  if (t.device() != Device::cpu) t.copy_from(h);
}

// ---- point-to-point ----

std::unique_ptr<Work> MpiCommunicator::start_send(const Tensor& t, int dst, int tag, bool blocking) {
  const char* op = blocking ? "send" : "isend";
  check_peer(op, dst, tag, !blocking);
  check_tensor(op, t, "sent");
  MT_CHECK(tag <= tag_ub_, "[{}] {}: tag {} exceeds this MPI's largest tag {}", op, where(), tag, tag_ub_);
  MPI_Datatype type = mpi_type(t.dtype());
  auto work = std::make_unique<MpiWork>(op, where(), type);
  Tensor h = host_copy(t);
  work->keep(t);
  work->keep(h);
  size_t es = dtype_size(t.dtype());
  // Chunks of one tensor share a tag; MPI delivers messages between two ranks on one tag in order.
  for_each_chunk(h.numel(), max_message_elements_, [&](int64_t first, int n) {
    char* p = bytes(h) + first * es;
    if (blocking)
      MPI_OP_CHECK("send", MPI_Send(p, n, type, dst, tag, comm_));
    else
      MPI_OP_CHECK("isend", MPI_Isend(p, n, type, dst, tag, comm_, work->add_request()));
  });
  if (blocking) work->wait();
  return work;
}

std::unique_ptr<Work> MpiCommunicator::start_recv(Tensor& t, int src, int tag, bool blocking) {
  const char* op = blocking ? "recv" : "irecv";
  check_peer(op, src, tag, !blocking);
  check_tensor(op, t, "receive");
  MT_CHECK(tag <= tag_ub_, "[{}] {}: tag {} exceeds this MPI's largest tag {}", op, where(), tag, tag_ub_);
  MPI_Datatype type = mpi_type(t.dtype());
  auto work = std::make_unique<MpiWork>(op, where(), type);
  Tensor h = host_target(t);
  work->keep(t);
  work->keep(h);
  size_t es = dtype_size(t.dtype());
  for_each_chunk(h.numel(), max_message_elements_, [&](int64_t first, int n) {
    char* p = bytes(h) + first * es;
    if (!blocking) {
      MPI_OP_CHECK("irecv", MPI_Irecv(p, n, type, src, tag, comm_, work->add_request(n)));
      return;
    }
    MPI_Status status;
    CommWatchdog::Guard watch("recv", [&] { return fmt::format("{}, from rank {}", where(), src); });
    int rc = MPI_Recv(p, n, type, src, tag, comm_, &status);
    int error_class = MPI_SUCCESS;
    if (rc != MPI_SUCCESS) MPI_Error_class(rc, &error_class);
    MT_CHECK(error_class != MPI_ERR_TRUNCATE,
             "[recv] {}: the message from rank {} (tag {}) is longer than the {} elements of the receive tensor; "
             "sender and receiver must agree on the element count",
             where(), src, tag, h.numel());
    if (rc != MPI_SUCCESS) throw_mpi_error(__FILE__, __LINE__, fmt::format("[recv] {}: MPI_Recv", where()), rc);
    int count = 0;
    MPI_Get_count(&status, type, &count);
    MT_CHECK(count == n,
             "[recv] {}: received {} elements from rank {} (tag {}) into a tensor of {}; sender and receiver must "
             "agree on the element count",
             where(), count, src, tag, h.numel());
  });
  copy_back(*work, t, h);
  if (blocking) work->wait();
  return work;
}

void MpiCommunicator::send(const Tensor& t, int dst, int tag) { start_send(t, dst, tag, true); }
void MpiCommunicator::recv(Tensor& t, int src, int tag) { start_recv(t, src, tag, true); }
std::unique_ptr<Work> MpiCommunicator::isend(const Tensor& t, int dst, int tag) {
  return start_send(t, dst, tag, false);
}
std::unique_ptr<Work> MpiCommunicator::irecv(Tensor& t, int src, int tag) { return start_recv(t, src, tag, false); }

// ---- groups ----

void MpiCommunicator::barrier() { MPI_OP_CHECK("barrier", MPI_Barrier(comm_)); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm child = MPI_COMM_NULL;
  MPI_OP_CHECK("split", MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &child));
  if (child == MPI_COMM_NULL) return nullptr;
  return std::unique_ptr<Communicator>(new MpiCommunicator(Adopt{}, child, name() + "/split", max_message_elements_));
}

void MpiCommunicator::abort(int code) {
  std::fflush(nullptr);
  MPI_Abort(comm_, code);
  std::_Exit(code);  // MPI_Abort does not return in practice; the standard does not promise it
}

}  // namespace meshtrain
