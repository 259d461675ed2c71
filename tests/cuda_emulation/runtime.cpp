// CUDA emulation: the runtime API. Device memory is host memory (256-byte aligned, filled with 0xFF
// when allocated, so unwritten fp32/bf16 values read as NaN); every stream runs its work at once, in
// issue order, on the calling thread, which is a legal schedule of a real GPU's streams; a stream
// that captures a graph records its work instead, and a graph launch replays the recording.
// Events record host time. Work that finishes on its own (deferred.h: the emulated NCCL's transfers)
// is waited for at the stream's synchronisation points. One device is visible by default
// (MT_CUDA_EMU_DEVICES=N shows N), none when CUDA_VISIBLE_DEVICES is set and empty.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cuda_runtime.h"
#include "deferred.h"

namespace mt_emu {

void run_grid_now(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

struct Graph {
  std::vector<std::function<void()>> ops;
  std::vector<void*> owned;  // allocations made while capturing: they live as long as the graph
};
struct GraphExec {
  std::vector<std::function<void()>> ops;
};
}  // namespace mt_emu
namespace mt_emu {
/// One piece of deferred work (deferred.h), shared by its stream and the events recorded after it.
struct Deferred {
  std::function<void()> start;
  Poll poll;
  bool started = false, done = false;
};
using DeferredList = std::vector<std::shared_ptr<Deferred>>;
}  // namespace mt_emu
struct CUstream_st {
  mt_emu::Graph* capture = nullptr;
  mt_emu::DeferredList pending;  // deferred work not yet known to be done, in queue order
};
namespace mt_emu {
struct Event {
  double seconds = 0.0;
  DeferredList after;     // what was pending on the stream when the event was recorded
  Graph* graph = nullptr;  // the graph whose capture recorded it (a fork point for other streams)
};
struct MemPool {};

namespace {

thread_local cudaError_t g_last = cudaSuccess;
std::mutex g_mutex;
std::map<void*, size_t> g_allocations;  // device pointer -> bytes
size_t g_in_use = 0;
constexpr size_t kDeviceBytes = size_t{16} << 30;
Stream g_default_stream;
MemPool g_pool;

Stream* resolve(cudaStream_t s) { return s ? s : &g_default_stream; }

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

cudaError_t fail(cudaError_t e) {
  g_last = e;
  return e;
}

void* allocate(size_t n) {
  void* p = nullptr;
  if (::posix_memalign(&p, 256, n ? n : 1) != 0) return nullptr;
  std::memset(p, 0xFF, n);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_allocations[p] = n;
  g_in_use += n;
  return p;
}

bool release(void* p) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_allocations.find(p);
    if (it == g_allocations.end()) return false;
    g_in_use -= it->second;
    g_allocations.erase(it);
  }
  std::free(p);
  return true;
}

}  // namespace

void set_error(cudaError_t e) { g_last = e; }

std::set<Stream*> g_streams{&g_default_stream};  // every live stream, for cudaDeviceSynchronize

/// True while some stream still captures into g.
bool live_capture(const Graph* g) {
  for (const Stream* st : g_streams)
    if (st->capture == g) return true;
  return false;
}

/// Moves every stream forward: each starts its deferred work in order, one piece after another.
void progress_all() {
  for (Stream* st : g_streams) {
    for (auto& d : st->pending) {
      if (!d->started) {
        d->started = true;
        d->start();
      }
      if (!d->done) d->done = d->poll();
      if (!d->done) break;  // stream order: nothing after it starts yet
    }
    std::erase_if(st->pending, [](const auto& d) { return d->done; });
  }
}
bool test_all(const DeferredList& list) {
  progress_all();
  return std::all_of(list.begin(), list.end(), [](const auto& d) { return d->done; });
}
void wait_all(const DeferredList& list) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!test_all(list)) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) {
      std::fprintf(stderr, "[cuda emulation] deadlock: stream work (NCCL transfers) has waited over 60 s for its "
                           "peers; two ranks probably each wait on the other in one stream's order\n");
      std::abort();
    }
    std::this_thread::yield();
  }
}

void enqueue_grid(const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t s, std::function<void()> body) {
  Stream* st = resolve(s);
  if (st->capture) {
    st->capture->ops.push_back([=, body = std::move(body)] { run_grid_now(name, grid, block, smem, body); });
    return;
  }
  if (!st->pending.empty()) wait_all(DeferredList(st->pending));  // stream order: after the work before it
  run_grid_now(name, grid, block, smem, body);
}

void enqueue_host(cudaStream_t s, std::function<void()> work) {
  Stream* st = resolve(s);
  if (!st->capture && !st->pending.empty()) wait_all(DeferredList(st->pending));  // stream order
  if (st->capture) st->capture->ops.push_back(std::move(work));
  else work();
}

}  // namespace mt_emu

void mt_emu::defer(cudaStream_t s, std::function<void()> start, Poll poll) {
  auto d = std::make_shared<Deferred>();
  d->start = std::move(start);
  d->poll = std::move(poll);
  resolve(s)->pending.push_back(std::move(d));
  progress_all();  // it starts now if its stream is idle
}
void mt_emu::drain(cudaStream_t s) { wait_all(DeferredList(resolve(s)->pending)); }
bool mt_emu::capturing(cudaStream_t s) { return resolve(s)->capture != nullptr; }

using mt_emu::enqueue_host;
using mt_emu::fail;

// One emulated GPU per process by default; MT_CUDA_EMU_DEVICES=N shows N (all the same CPU memory),
// so multi-rank tests can give every rank a GPU of its own as NCCL wants. CUDA_VISIBLE_DEVICES=""
// hides them all, as with real GPUs.
namespace {
int emulated_devices() {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible && *visible == '\0') return 0;
  const char* n = std::getenv("MT_CUDA_EMU_DEVICES");
  return n && std::atoi(n) > 0 ? std::atoi(n) : 1;
}
thread_local int g_device = 0;
}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  *count = emulated_devices();
  return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}
cudaError_t cudaGetDevice(int* device) {
  *device = g_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= emulated_devices()) return fail(cudaErrorInvalidDevice);
  g_device = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetPCIBusId(char* bus_id, int len, int device) {
  if (device < 0 || device >= emulated_devices() || len < 13) return fail(cudaErrorInvalidValue);
  std::snprintf(bus_id, static_cast<size_t>(len), "0000:%02X:00.0", device + 1);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {  // kernels and copies ran when queued; deferred work may not have
  return mt_emu::test_all(mt_emu::resolve(s)->pending) ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "CUDA emulation on the CPU");
  p->totalGlobalMem = mt_emu::kDeviceBytes;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 1;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  for (mt_emu::Stream* st : mt_emu::g_streams) mt_emu::drain(st);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  cudaError_t e = mt_emu::g_last;
  mt_emu::g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return mt_emu::g_last; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaError (emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(mt_emu::g_mutex);
  *total_bytes = mt_emu::kDeviceBytes;
  *free_bytes = mt_emu::kDeviceBytes - std::min(mt_emu::g_in_use, mt_emu::kDeviceBytes);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = n > mt_emu::kDeviceBytes ? nullptr : mt_emu::allocate(n);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  return mt_emu::release(p) ? cudaSuccess : fail(cudaErrorInvalidDevicePointer);
}
cudaError_t cudaMallocHost(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s) {
  cudaError_t e = cudaMalloc(p, n);
  if (e != cudaSuccess) return e;
  mt_emu::Stream* st = mt_emu::resolve(s);
  if (st->capture) {
    // A graph's allocation: fixed address, uninitialised again at every replay.
    st->capture->owned.push_back(*p);
    void* q = *p;
    st->capture->ops.push_back([q, n] { std::memset(q, 0xFF, n); });
  }
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (mt_emu::resolve(s)->capture) return cudaSuccess;  // freed with the graph
  return cudaFree(p);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t s) {
  enqueue_host(s, [=] {
    if (n) std::memmove(dst, src, n);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t n) {
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s) {
  enqueue_host(s, [=] { std::memset(p, value, n); });
  return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  *pool = &mt_emu::g_pool;
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr, void* value) {
  *static_cast<uint64_t*>(value) = 0;  // pooled allocations are counted with the others
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new mt_emu::Stream;
  mt_emu::g_streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s) mt_emu::drain(s);
  mt_emu::g_streams.erase(s);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (mt_emu::resolve(s)->capture) return fail(cudaErrorStreamCaptureUnsupported);
  mt_emu::drain(s);
  return cudaSuccess;
}
// The host waits here (a GPU would make only the stream wait): deferred work cannot be chained.
// An event recorded during a capture pulls the waiting stream into that capture (CUDA's fork): its
// work is recorded too until the capture ends.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  mt_emu::Stream* st = mt_emu::resolve(s);
  if (e->graph && mt_emu::live_capture(e->graph)) {
    if (!st->capture) st->capture = e->graph;
    return cudaSuccess;
  }
  if (st->capture) {  // a capturing stream records the wait as nothing to do: the work before it ran
    return cudaSuccess;
  }
  mt_emu::wait_all(e->after);
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  mt_emu::Stream* st = mt_emu::resolve(s);
  if (st->capture) return fail(cudaErrorInvalidValue);
  st->capture = new mt_emu::Graph;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  mt_emu::Stream* st = mt_emu::resolve(s);
  if (!st->capture) return fail(cudaErrorInvalidValue);
  *graph = st->capture;
  for (mt_emu::Stream* other : mt_emu::g_streams)  // streams forked into the capture leave it too
    if (other->capture == *graph) other->capture = nullptr;
  st->capture = nullptr;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  *status = mt_emu::resolve(s)->capture ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new mt_emu::Event;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  mt_emu::Stream* st = mt_emu::resolve(s);
  if (st->capture) {
    st->capture->ops.push_back([e] { e->seconds = mt_emu::now(); });
    e->graph = st->capture;
    e->after.clear();
    return cudaSuccess;
  }
  e->graph = nullptr;
  // Not enqueue_host: recording does not wait for the stream's deferred work, the event remembers it.
  mt_emu::progress_all();
  e->after = st->pending;
  e->seconds = mt_emu::now();
  return cudaSuccess;
}
// Querying or waiting for an event recorded by a capture still going on is an error in CUDA (it ends
// the capture): the emulation reports it.
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (e->graph && mt_emu::live_capture(e->graph)) return fail(cudaErrorStreamCaptureUnsupported);
  mt_emu::wait_all(e->after);
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (e->graph && mt_emu::live_capture(e->graph)) return fail(cudaErrorStreamCaptureUnsupported);
  return mt_emu::test_all(e->after) ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = static_cast<float>((end->seconds - start->seconds) * 1e3);
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  *exec = new mt_emu::GraphExec{graph->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  for (const auto& op : exec->ops) enqueue_host(s, op);
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  for (void* p : graph->owned) mt_emu::release(p);
  delete graph;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize && (value < 0 || value > 227 * 1024))
    return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}
