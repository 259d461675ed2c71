// CUDA emulation: NCCL over MPI (include/nccl.h says what is emulated and what cannot be).
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "deferred.h"

namespace mt_emu {
struct NcclComm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, size = 1;
  std::atomic<bool> aborted{false};
};
}  // namespace mt_emu

namespace {

using mt_emu::NcclComm;
namespace fs = std::filesystem;

thread_local std::string g_last_error;

ncclResult_t failure(ncclResult_t code, std::string why) {
  g_last_error = "emulated NCCL: " + std::move(why);
  return code;
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  }
  return 0;
}

float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <class T, class Acc>
Acc combine(Acc a, Acc b, ncclRedOp_t op) {
  switch (op) {
    case ncclSum: case ncclAvg: return a + b;
    case ncclProd: return a * b;
    case ncclMax: return b > a ? b : a;
    case ncclMin: return b < a ? b : a;
  }
  return a;
}

/// out[i] = op over ranks r (in order) of all[r * stride + offset + i], for i < count.
template <class T, class Acc>
void reduce_typed(void* out, const char* all, size_t stride, size_t offset, size_t count, int size, ncclRedOp_t op) {
  const T* in = reinterpret_cast<const T*>(all);
  T* o = static_cast<T*>(out);
  for (size_t i = 0; i < count; ++i) {
    Acc acc = static_cast<Acc>(in[offset + i]);
    for (int r = 1; r < size; ++r) acc = combine<T, Acc>(acc, static_cast<Acc>(in[r * stride + offset + i]), op);
    if (op == ncclAvg) acc = acc / static_cast<Acc>(size);
    o[i] = static_cast<T>(acc);
  }
}

ncclResult_t reduce(void* out, const char* all, size_t stride, size_t offset, size_t count, int size,
                    ncclDataType_t type, ncclRedOp_t op) {
  const bool floating = type == ncclFloat32 || type == ncclFloat64 || type == ncclBfloat16;
  if (op == ncclAvg && !floating) return failure(ncclInvalidArgument, "ncclAvg needs a floating type");
  switch (type) {
    // Unsigned accumulators make integer sums wrap as NCCL's do.
    case ncclInt8: reduce_typed<int8_t, int8_t>(out, all, stride, offset, count, size, op); break;
    case ncclUint8: reduce_typed<uint8_t, uint8_t>(out, all, stride, offset, count, size, op); break;
    case ncclInt32: reduce_typed<int32_t, int64_t>(out, all, stride, offset, count, size, op); break;
    case ncclUint32: reduce_typed<uint32_t, uint32_t>(out, all, stride, offset, count, size, op); break;
    case ncclInt64: reduce_typed<int64_t, int64_t>(out, all, stride, offset, count, size, op); break;
    case ncclUint64: reduce_typed<uint64_t, uint64_t>(out, all, stride, offset, count, size, op); break;
    case ncclFloat32: reduce_typed<float, float>(out, all, stride, offset, count, size, op); break;
    case ncclFloat64: reduce_typed<double, double>(out, all, stride, offset, count, size, op); break;
    case ncclBfloat16: {
      const auto* in = reinterpret_cast<const uint16_t*>(all);
      auto* o = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < count; ++i) {
        float acc = bf16_to_float(in[offset + i]);
        for (int r = 1; r < size; ++r)
          acc = combine<float, float>(acc, bf16_to_float(in[r * stride + offset + i]), op);
        if (op == ncclAvg) acc /= static_cast<float>(size);
        o[i] = float_to_bf16(acc);
      }
      break;
    }
    case ncclFloat16: return failure(ncclInvalidArgument, "fp16 is not emulated");
  }
  // int32 sums: the int64 accumulator's low 32 bits, as a wrapping int32 sum gives.
  return ncclSuccess;
}

bool valid(ncclComm_t c) { return c != nullptr && c->mpi != MPI_COMM_NULL && !c->aborted.load(); }

/// Runs a collective now, or, on a stream that captures a CUDA graph, records it to run at every
/// replay (NCCL's kernels are captured like any other).
ncclResult_t now_or_recorded(cudaStream_t stream, std::function<ncclResult_t()> work) {
  if (!mt_emu::capturing(stream)) return work();
  mt_emu::enqueue_host(stream, [work = std::move(work)] {
    if (work() != ncclSuccess) {
      std::fprintf(stderr, "[cuda emulation] an NCCL collective replayed from a CUDA graph failed: %s\n",
                   g_last_error.c_str());
      std::abort();
    }
  });
  return ncclSuccess;
}

struct P2p {
  bool send;
  void* buf;
  size_t bytes;
  int peer;
  ncclComm_t comm;
  cudaStream_t stream;
};
thread_local int g_group_depth = 0;
thread_local std::vector<P2p> g_group;

// Queues the transfers on the stream of the first, as one piece of deferred work: they start
// together once the stream reaches them (NCCL launches a group as one kernel) and finish when all
// have. Sends complete only once matched (MPI_Issend), so a schedule that deadlocks NCCL deadlocks
// here too, instead of being rescued by MPI's buffering of small messages.
ncclResult_t post_p2p(const std::vector<P2p>& ops) {
  if (ops.empty()) return ncclSuccess;
  auto reqs = std::make_shared<std::vector<MPI_Request>>(ops.size(), MPI_REQUEST_NULL);
  auto start = [ops, reqs] {
    for (size_t i = 0; i < ops.size(); ++i) {
      const P2p& p = ops[i];
      const int n = static_cast<int>(p.bytes);
      if (p.send) MPI_Issend(p.buf, n, MPI_BYTE, p.peer, 0, p.comm->mpi, &(*reqs)[i]);
      else MPI_Irecv(p.buf, n, MPI_BYTE, p.peer, 0, p.comm->mpi, &(*reqs)[i]);
    }
  };
  auto poll = [reqs] {
    int flag = 0;
    MPI_Testall(static_cast<int>(reqs->size()), reqs->data(), &flag, MPI_STATUSES_IGNORE);
    return flag != 0;
  };
  mt_emu::defer(ops.front().stream, std::move(start), std::move(poll));
  return ncclSuccess;
}

ncclResult_t p2p(bool send, const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                 cudaStream_t stream) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  if (peer < 0 || peer >= comm->size) return failure(ncclInvalidArgument, "peer out of range");
  if (count * type_size(type) > static_cast<size_t>(INT32_MAX)) return failure(ncclInvalidArgument, "message too big");
  if (mt_emu::capturing(stream))
    return failure(ncclInvalidUsage, "sends and receives inside a CUDA graph capture are not emulated");
  P2p op{send, const_cast<void*>(buf), count * type_size(type), peer, comm, stream};
  if (g_group_depth > 0) {
    g_group.push_back(op);
    return ncclSuccess;
  }
  return post_p2p({op});
}

/// Every rank's bytes bytes of send, concatenated in rank order; collectives run when called, after
/// the transfers queued before them on their stream (stream order).
ncclResult_t gather_all(std::vector<char>& all, const void* send, size_t bytes, ncclComm_t comm, cudaStream_t stream) {
  mt_emu::drain(stream);
  if (bytes * comm->size > static_cast<size_t>(INT32_MAX)) return failure(ncclInvalidArgument, "buffer too big");
  all.resize(bytes * comm->size);
  if (MPI_Allgather(send, static_cast<int>(bytes), MPI_BYTE, all.data(), static_cast<int>(bytes), MPI_BYTE,
                    comm->mpi) != MPI_SUCCESS)
    return failure(ncclSystemError, "MPI_Allgather failed");
  return ncclSuccess;
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

const char* ncclGetLastError(ncclComm_t) { return g_last_error.c_str(); }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(::getpid()) ^
                      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  for (size_t i = 0; i < sizeof id->internal; i += 8) {
    const uint64_t v = gen();
    std::memcpy(id->internal + i, &v, 8);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (!comm || nranks < 1 || rank < 0 || rank >= nranks) return failure(ncclInvalidArgument, "ncclCommInitRank");
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  // Rendezvous: every member writes its world rank under a folder named by the id, then reads all.
  char name[40];
  uint64_t a, b;
  std::memcpy(&a, id.internal, 8);
  std::memcpy(&b, id.internal + 8, 8);
  std::snprintf(name, sizeof name, "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  const char* tmp = std::getenv("TMPDIR");
  const fs::path dir = fs::path(tmp && *tmp ? tmp : "/tmp") / (std::string("mt_nccl_emu_") + name);
  std::error_code ec;
  fs::create_directories(dir, ec);
  {
    const fs::path part = dir / (std::to_string(rank) + ".part");
    std::ofstream(part) << world_rank << "\n";
    fs::rename(part, dir / std::to_string(rank), ec);
    if (ec) return failure(ncclSystemError, "rendezvous file in " + dir.string() + ": " + ec.message());
  }
  std::vector<int> members(static_cast<size_t>(nranks), -1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (int r = 0; r < nranks; ++r) {
    while (!fs::exists(dir / std::to_string(r))) {
      if (std::chrono::steady_clock::now() > deadline)
        return failure(ncclSystemError, "rank " + std::to_string(r) + " never joined (60 s)");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::ifstream(dir / std::to_string(r)) >> members[static_cast<size_t>(r)];
  }
  MPI_Group world_group, group;
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  MPI_Group_incl(world_group, nranks, members.data(), &group);
  MPI_Comm mpi = MPI_COMM_NULL;
  const int rc = MPI_Comm_create_group(MPI_COMM_WORLD, group, static_cast<int>(a % 30000), &mpi);
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
  if (rc != MPI_SUCCESS || mpi == MPI_COMM_NULL) return failure(ncclSystemError, "MPI_Comm_create_group failed");
  MPI_Barrier(mpi);  // everyone has read the folder
  if (rank == 0) fs::remove_all(dir, ec);
  *comm = new NcclComm{mpi, rank, nranks};
  return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  if (!valid(comm) || !newcomm || config) return failure(ncclInvalidArgument, "ncclCommSplit");
  MPI_Comm mpi = MPI_COMM_NULL;
  if (MPI_Comm_split(comm->mpi, color == NCCL_SPLIT_NOCOLOR ? MPI_UNDEFINED : color, key, &mpi) != MPI_SUCCESS)
    return failure(ncclSystemError, "MPI_Comm_split failed");
  *newcomm = nullptr;
  if (mpi == MPI_COMM_NULL) return ncclSuccess;
  auto* c = new NcclComm{mpi, 0, 1};
  MPI_Comm_rank(mpi, &c->rank);
  MPI_Comm_size(mpi, &c->size);
  *newcomm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

// An abort may come from another thread while this rank waits in a transfer on the communicator
// (meshtrain's watchdog aborts a communicator stuck in a collective). An MPI call in flight cannot be
// cancelled, so the emulation only marks the communicator unusable and leaves it allocated: the
// process that aborts is about to end.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm) comm->aborted.store(true);
  return ncclSuccess;
}

ncclResult_t ncclCommCount(ncclComm_t comm, int* count) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  *count = comm->size;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(ncclComm_t comm, int* rank) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  *async_error = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  return now_or_recorded(stream, [=] {
    std::vector<char> all;
    if (ncclResult_t r = gather_all(all, sendbuff, count * type_size(type), comm, stream); r != ncclSuccess) return r;
    return reduce(recvbuff, all.data(), count, 0, count, comm->size, type, op);
  });
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  return now_or_recorded(stream, [=] {
    std::vector<char> all;
    const size_t per_rank = recvcount * comm->size;
    if (ncclResult_t r = gather_all(all, sendbuff, per_rank * type_size(type), comm, stream); r != ncclSuccess)
      return r;
    return reduce(recvbuff, all.data(), per_rank, recvcount * comm->rank, recvcount, comm->size, type, op);
  });
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  return now_or_recorded(stream, [=] {
    std::vector<char> all;
    const size_t bytes = sendcount * type_size(type);
    if (ncclResult_t r = gather_all(all, sendbuff, bytes, comm, stream); r != ncclSuccess) return r;
    std::memcpy(recvbuff, all.data(), all.size());
    return ncclSuccess;
  });
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!valid(comm)) return failure(ncclInvalidArgument, "invalid communicator");
  if (root < 0 || root >= comm->size) return failure(ncclInvalidArgument, "root out of range");
  const size_t bytes = count * type_size(type);
  if (bytes > static_cast<size_t>(INT32_MAX)) return failure(ncclInvalidArgument, "buffer too big");
  return now_or_recorded(stream, [=] {
    mt_emu::drain(stream);
    if (comm->rank == root && sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, bytes);
    if (MPI_Bcast(recvbuff, static_cast<int>(bytes), MPI_BYTE, root, comm->mpi) != MPI_SUCCESS)
      return failure(ncclSystemError, "MPI_Bcast failed");
    return ncclSuccess;
  });
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return p2p(true, sendbuff, count, type, peer, comm, stream);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return p2p(false, recvbuff, count, type, peer, comm, stream);
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return failure(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--g_group_depth > 0) return ncclSuccess;
  std::vector<P2p> ops;
  ops.swap(g_group);
  return post_p2p(ops);
}
