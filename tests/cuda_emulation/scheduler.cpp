// CUDA emulation: running a grid. Every CUDA thread of a block is a fiber with its own stack on the
// calling CPU thread, switched by a few instructions of x86-64 assembly (swapcontext would make two
// system calls per switch, which made a training step take seconds). Blocks run one at a time, in a shuffled order; within a block the
// fibers run in a shuffled order, each until it reaches a barrier (__syncthreads, a warp shuffle or
// __syncwarp) or ends, and the order is shuffled again every time a barrier releases. So a thread
// that reads shared memory another thread writes without a barrier between them sees the value
// missing (or stale) in some order, and the test fails instead of passing by luck.
// Deadlocks (a barrier that some live thread never reaches, a shuffle with a lane that exited) are
// reported as errors naming the kernel. Set MT_CUDA_EMU_SEED to change the shuffles.
// A kernel whose first grid reached no barrier at all is run without fibers from then on (each
// thread called in turn, in the same shuffled order): the same schedule, without the switching.
// Should such a kernel reach a barrier later, that is an error asking for MT_CUDA_EMU_FIBERS=1.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <set>
#include <stdexcept>
#include <string>
#include <typeindex>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

// mt_emu_switch(save, next): saves the callee-saved registers on the current stack, stores the stack
// pointer in *save and continues on the stack `next` (made by a previous switch or by new_stack).
extern "C" void mt_emu_switch(void** save, void* next);
asm(R"(
  .text
  .globl mt_emu_switch
  .type mt_emu_switch, @function
mt_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mt_emu_switch, .-mt_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace mt_emu {

namespace {

constexpr size_t kStackBytes = 256 * 1024;

// Under ThreadSanitizer every CUDA thread is a TSan fiber, switched without implied ordering; the
// only happens-before edges are the ones CUDA gives: launch -> every thread, barrier arrivals ->
// barrier departures, every thread -> the end of the grid. So two threads of a block touching the
// same memory without a barrier between them is reported as a race whatever order they ran in.
// The scheduler's own bookkeeping is relaxed atomics, which create no edges.
#if defined(__SANITIZE_THREAD__)
constexpr bool kTsan = true;
void* tsan_fiber_create() { return __tsan_create_fiber(0); }
void* tsan_fiber_current() { return __tsan_get_current_fiber(); }
void tsan_switch(void* f) { __tsan_switch_to_fiber(f, __tsan_switch_to_fiber_no_sync); }
void tsan_release(void* a) { __tsan_release(a); }
void tsan_acquire(void* a) { __tsan_acquire(a); }
#else
constexpr bool kTsan = false;
void* tsan_fiber_create() { return nullptr; }
void* tsan_fiber_current() { return nullptr; }
void tsan_switch(void*) {}
void tsan_release(void*) {}
void tsan_acquire(void*) {}
#endif

constexpr auto kRelaxed = std::memory_order_relaxed;

enum class Wait { running, block, warp, done };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while not running
  void* tsan = nullptr;
  ThreadState state;
  std::atomic<Wait> wait{Wait::running};
  uint64_t deposit[2] = {0, 0};          // by the parity of the shuffle: see warp_exchange
  std::atomic<uint64_t> exchanges{0};    // shuffles this thread has deposited into
};

struct BlockRun {
  const char* name = "";
  std::vector<Fiber> fibers;
  void* scheduler_sp = nullptr;
  const std::function<void()>* body = nullptr;
  std::atomic<int> current{-1};
  void* scheduler_tsan = nullptr;
  // Addresses whose release/acquire stand for the launch, the barriers and the end of the block.
  char block_start = 0, block_end = 0, block_barrier = 0;
  std::vector<char> warp_barrier;
  std::vector<unsigned char> dynamic_smem;
  std::exception_ptr error;
  bool direct = false;   // threads called in turn on the scheduler's stack (no barriers expected)
  std::atomic<bool> parked{false};  // some thread reached a barrier
};

std::atomic<BlockRun*> g_run_block{nullptr};  // the block being run (one at a time); relaxed: no ordering
BlockRun* running() { return g_run_block.load(std::memory_order_relaxed); }
ThreadState g_host;         // what built-ins read outside a kernel

/// The shuffles' generator: xorshift64*, seeded from MT_CUDA_EMU_SEED (fixed by default, so runs
/// repeat); cheap, since a block's threads are reshuffled at every barrier.
struct Rng {
  uint64_t state;
  uint64_t next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>((static_cast<unsigned __int128>(next()) * i) >> 64);
      std::swap(v[i - 1], v[j]);
    }
  }
};

Rng& rng() {
  static Rng r{[] {
    const char* s = std::getenv("MT_CUDA_EMU_SEED");
    const uint64_t seed = s ? std::strtoull(s, nullptr, 10) : 20261205ull;
    return seed * 0x9E3779B97F4A7C15ull + 1;
  }()};
  return r;
}

/// Fiber stacks and TSan fiber contexts, kept between blocks (stacks are mmap'd lazily: untouched
/// pages cost nothing; a TSan context is costly to make). Reusing them across blocks adds no
/// ordering that the block boundaries do not already give.
struct FiberSlot {
  char* stack;
  void* tsan;
};
std::vector<FiberSlot>& slots(size_t n) {
  static std::vector<FiberSlot> pool;
  while (pool.size() < n) {
    void* p = ::mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("[cuda emulation] cannot map a fiber stack");
    pool.push_back(FiberSlot{static_cast<char*>(p), tsan_fiber_create()});
  }
  return pool;
}

[[noreturn]] void fiber_main() {
  BlockRun& run = *running();
  tsan_acquire(&run.block_start);
  try {
    (*run.body)();
  } catch (...) {
    if (!run.error) run.error = std::current_exception();
  }
  Fiber& f = run.fibers[run.current.load(kRelaxed)];
  f.wait.store(Wait::done, kRelaxed);
  // Nothing of the block's state is touched after the release: the block may end right after it.
  void* const scheduler_tsan = run.scheduler_tsan;
  void* const scheduler_sp = run.scheduler_sp;
  void** const my_sp = &f.sp;
  tsan_release(&run.block_end);
  tsan_switch(scheduler_tsan);
  mt_emu_switch(my_sp, scheduler_sp);  // never resumed
  std::abort();
}

/// A stack whose first switch enters fiber_main (6 zero registers, then its address to `ret` to,
/// above it a zero return address so that fiber_main starts with the ABI's stack alignment).
void* new_stack(char* base) {
  auto* top = reinterpret_cast<uintptr_t*>(base + kStackBytes);
  *--top = 0;
  *--top = reinterpret_cast<uintptr_t>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--top = 0;
  return top;
}

Fiber& me() {
  const int i = running() ? running()->current.load(kRelaxed) : -1;
  if (i < 0) throw std::logic_error("[cuda emulation] a device function ran outside a kernel");
  return running()->fibers[i];
}

[[noreturn]] void fail(const std::string& what);

void park(Wait why, unsigned) {
  Fiber& f = me();
  if (running()->direct)
    fail("reached a barrier, but its earlier launches never did and it now runs without fibers; rerun with "
         "MT_CUDA_EMU_FIBERS=1");
  running()->parked.store(true, kRelaxed);
  const int self = running()->current.load(kRelaxed);
  BlockRun& run = *running();
  char* token = why == Wait::block ? &run.block_barrier : &run.warp_barrier[static_cast<size_t>(self / 32)];
  f.wait.store(why, kRelaxed);
  void* const scheduler_tsan = running()->scheduler_tsan;
  void* const scheduler_sp = running()->scheduler_sp;
  tsan_release(token);
  tsan_switch(scheduler_tsan);
  mt_emu_switch(&f.sp, scheduler_sp);
  tsan_acquire(token);
}

int linear(const ThreadState& s) {
  return static_cast<int>(s.thread_idx.x + s.block_dim.x * (s.thread_idx.y + s.block_dim.y * s.thread_idx.z));
}

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("[cuda emulation] kernel " + std::string(running() ? running()->name : "?") + ": " + what);
}

/// Releases the barriers every live thread (block) or lane (warp) has reached; the released fibers.
std::vector<int> release(BlockRun& run) {
  const int n = static_cast<int>(run.fibers.size()), warps = (n + 31) / 32;
  std::vector<int> live_in(static_cast<size_t>(warps), 0), waiting_in(static_cast<size_t>(warps), 0);
  int live = 0, at_block = 0;
  for (int i = 0; i < n; ++i) {
    const Wait w = run.fibers[i].wait.load(kRelaxed);
    if (w == Wait::done) continue;
    ++live;
    ++live_in[i / 32];
    if (w == Wait::block) ++at_block;
    if (w == Wait::warp) ++waiting_in[i / 32];
  }
  std::vector<int> out;
  if (live == 0) return out;
  for (int i = 0; i < n; ++i) {
    const Wait w = run.fibers[i].wait.load(kRelaxed);
    if (w == Wait::done) continue;
    if (at_block == live || live_in[i / 32] == waiting_in[i / 32]) out.push_back(i);
  }
  if (out.empty())
    fail("deadlock: " + std::to_string(at_block) + " threads wait at __syncthreads and " +
         std::to_string(live - at_block) + " at a warp barrier (__shfl_*_sync / __syncwarp) that the others never reach");
  return out;
}

void run_block(BlockRun& run, dim3 grid, dim3 block, uint3 block_idx) {
  const int n = static_cast<int>(block.x * block.y * block.z);
  auto& pool = slots(run.direct ? 0 : static_cast<size_t>(n));
  run.fibers = std::vector<Fiber>(static_cast<size_t>(n));
  run.warp_barrier.assign(static_cast<size_t>((n + 31) / 32), 0);
  for (int i = 0; i < n; ++i) {
    Fiber& f = run.fibers[i];
    f.state.thread_idx = uint3{static_cast<unsigned>(i) % block.x, (static_cast<unsigned>(i) / block.x) % block.y,
                               static_cast<unsigned>(i) / (block.x * block.y)};
    f.state.block_idx = block_idx;
    f.state.block_dim = block;
    f.state.grid_dim = grid;
    if (!run.direct) {
      f.sp = new_stack(pool[i].stack);
      f.tsan = pool[i].tsan;
    }
  }
  std::fill(run.dynamic_smem.begin(), run.dynamic_smem.end(), 0xFF);  // uninitialised, as on a GPU
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[i] = i;
  if (run.direct) {
    rng().shuffle(order);
    for (int i : order) {
      run.current.store(i, kRelaxed);
      (*run.body)();
    }
    run.current.store(-1, kRelaxed);
    return;
  }
  tsan_release(&run.block_start);  // the launch: everything before it happens before every thread
  while (true) {
    rng().shuffle(order);
    for (int i : order) {
      run.current.store(i, kRelaxed);
      run.fibers[i].wait.store(Wait::running, kRelaxed);
      void* const next = run.fibers[i].sp;  // read as the scheduler, before TSan switches fibers
      tsan_switch(run.fibers[i].tsan);
      mt_emu_switch(&run.scheduler_sp, next);
      if (run.error) {
        run.current.store(-1, kRelaxed);
        std::rethrow_exception(run.error);
      }
    }
    run.current.store(-1, kRelaxed);
    order = release(run);
    if (order.empty()) break;
  }
  tsan_acquire(&run.block_end);  // every thread happens before what follows the block
}

}  // namespace

ThreadState& current() {
  const int i = running() ? running()->current.load(kRelaxed) : -1;
  return i >= 0 ? running()->fibers[i].state : g_host;
}

void sync_threads() { park(Wait::block, 0); }

void sync_warp(unsigned mask) { park(Wait::warp, mask); }

int lane_id() { return linear(me().state) % 32; }

// One barrier per shuffle: deposits alternate between two slots, and a lane cannot deposit into
// shuffle r + 2's slot (the one shuffle r used) before every lane has passed shuffle r + 1's
// barrier, that is, after every lane has read its value of shuffle r.
uint64_t warp_exchange(unsigned mask, uint64_t value, int from_lane) {
  Fiber& f = me();
  const uint64_t round = f.exchanges.load(kRelaxed) + 1;
  f.exchanges.store(round, kRelaxed);
  f.deposit[round & 1] = value;
  park(Wait::warp, mask);
  const int self = running()->current.load(kRelaxed), source = self - self % 32 + from_lane;
  // The source may already have deposited its next shuffle's value (into the other slot).
  const uint64_t theirs =
      source < static_cast<int>(running()->fibers.size()) ? running()->fibers[source].exchanges.load(kRelaxed) : 0;
  if ((theirs != round && theirs != round + 1) || !((mask >> from_lane) & 1u))
    fail("lane " + std::to_string(self % 32) + " of warp " + std::to_string(self / 32) + " shuffles from lane " +
         std::to_string(from_lane) + ", which did not take part (exited, outside the mask, or past the block)");
  return running()->fibers[source].deposit[round & 1];
}

unsigned char* dynamic_shared_memory() {
  if (!running()) throw std::logic_error("[cuda emulation] dynamic shared memory outside a kernel");
  return running()->dynamic_smem.data();
}

/// With MT_CUDA_EMU_STATS set, the time spent per kernel is printed when the program ends.
struct KernelStats {
  std::map<std::string, std::pair<double, long>> seconds_launches;
  ~KernelStats() {
    if (!std::getenv("MT_CUDA_EMU_STATS")) return;
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [k, v] : seconds_launches) rows.emplace_back(v.first, k);
    std::sort(rows.rbegin(), rows.rend());
    for (const auto& [sec, k] : rows)
      std::fprintf(stderr, "[cuda emulation] %8.3f s %7ld launches  %s\n", sec, seconds_launches[k].second, k.c_str());
  }
};

void run_grid_now(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  static KernelStats stats;
  const auto t0 = std::chrono::steady_clock::now();
  struct Account {
    KernelStats& s;
    const char* name;
    std::chrono::steady_clock::time_point t0;
    ~Account() {
      auto& e = s.seconds_launches[name];
      e.first += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      e.second += 1;
    }
  } account{stats, name, t0};
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    set_error(cudaErrorInvalidValue);
    std::fprintf(stderr, "[cuda emulation] kernel %s: invalid launch (grid %ux%ux%u, block %ux%ux%u)\n", name,
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    return;
  }
  if (running()) throw std::logic_error("[cuda emulation] a kernel launched another kernel");
  // Kernels known to have no barriers, by the type of their launch's body (one per launch site and
  // template instantiation).
  static std::set<std::type_index> barrier_free;
  static const bool always_fibers = std::getenv("MT_CUDA_EMU_FIBERS") != nullptr;
  const std::type_index kind(body.target_type());
  BlockRun run;
  run.name = name;
  run.body = &body;
  run.direct = !always_fibers && !kTsan && barrier_free.count(kind) > 0;
  run.scheduler_tsan = tsan_fiber_current();
  run.dynamic_smem.resize(smem);
  std::vector<uint3> blocks;
  blocks.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
  rng().shuffle(blocks);
  g_run_block.store(&run, std::memory_order_relaxed);
  try {
    for (const uint3& b : blocks) run_block(run, grid, block, b);
  } catch (...) {
    g_run_block.store(nullptr, std::memory_order_relaxed);
    throw;
  }
  g_run_block.store(nullptr, std::memory_order_relaxed);
  if (!run.direct && !run.parked.load(kRelaxed)) barrier_free.insert(kind);
}

}  // namespace mt_emu
