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

enum class Wait { running, block, warp, done };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while not running
  ThreadState state;
  Wait wait = Wait::running;
  unsigned warp_mask = 0;
  uint64_t deposit[2] = {0, 0};  // by the parity of the shuffle: see warp_exchange
  uint64_t exchanges = 0;        // shuffles this thread has deposited into
};

struct BlockRun {
  const char* name = "";
  std::vector<Fiber> fibers;
  void* scheduler_sp = nullptr;
  const std::function<void()>* body = nullptr;
  int current = -1;
  std::vector<unsigned char> dynamic_smem;
  std::exception_ptr error;
  bool direct = false;   // threads called in turn on the scheduler's stack (no barriers expected)
  bool parked = false;   // some thread reached a barrier
};

BlockRun* g_run = nullptr;  // the block being run (one at a time)
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

/// Fiber stacks, kept between blocks (mmap'd lazily: untouched pages cost nothing).
std::vector<char*>& stacks(size_t n) {
  static std::vector<char*> pool;
  while (pool.size() < n) {
    void* p = ::mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("[cuda emulation] cannot map a fiber stack");
    pool.push_back(static_cast<char*>(p));
  }
  return pool;
}

[[noreturn]] void fiber_main() {
  BlockRun& run = *g_run;
  try {
    (*run.body)();
  } catch (...) {
    if (!run.error) run.error = std::current_exception();
  }
  Fiber& f = run.fibers[run.current];
  f.wait = Wait::done;
  mt_emu_switch(&f.sp, run.scheduler_sp);  // never resumed
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
  if (!g_run || g_run->current < 0) throw std::logic_error("[cuda emulation] a device function ran outside a kernel");
  return g_run->fibers[g_run->current];
}

[[noreturn]] void fail(const std::string& what);

void park(Wait why, unsigned mask) {
  Fiber& f = me();
  if (g_run->direct)
    fail("reached a barrier, but its earlier launches never did and it now runs without fibers; rerun with "
         "MT_CUDA_EMU_FIBERS=1");
  g_run->parked = true;
  f.wait = why;
  f.warp_mask = mask;
  mt_emu_switch(&f.sp, g_run->scheduler_sp);
}

int linear(const ThreadState& s) {
  return static_cast<int>(s.thread_idx.x + s.block_dim.x * (s.thread_idx.y + s.block_dim.y * s.thread_idx.z));
}

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("[cuda emulation] kernel " + std::string(g_run ? g_run->name : "?") + ": " + what);
}

/// Releases the barriers every live thread (block) or lane (warp) has reached; the released fibers.
std::vector<int> release(BlockRun& run) {
  const int n = static_cast<int>(run.fibers.size()), warps = (n + 31) / 32;
  std::vector<int> live_in(static_cast<size_t>(warps), 0), waiting_in(static_cast<size_t>(warps), 0);
  int live = 0, at_block = 0;
  for (int i = 0; i < n; ++i) {
    const Wait w = run.fibers[i].wait;
    if (w == Wait::done) continue;
    ++live;
    ++live_in[i / 32];
    if (w == Wait::block) ++at_block;
    if (w == Wait::warp) ++waiting_in[i / 32];
  }
  std::vector<int> out;
  if (live == 0) return out;
  for (int i = 0; i < n; ++i) {
    const Wait w = run.fibers[i].wait;
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
  auto& pool = stacks(run.direct ? 0 : static_cast<size_t>(n));
  run.fibers.assign(static_cast<size_t>(n), Fiber{});
  for (int i = 0; i < n; ++i) {
    Fiber& f = run.fibers[i];
    f.state.thread_idx = uint3{static_cast<unsigned>(i) % block.x, (static_cast<unsigned>(i) / block.x) % block.y,
                               static_cast<unsigned>(i) / (block.x * block.y)};
    f.state.block_idx = block_idx;
    f.state.block_dim = block;
    f.state.grid_dim = grid;
    if (!run.direct) f.sp = new_stack(pool[i]);
  }
  std::fill(run.dynamic_smem.begin(), run.dynamic_smem.end(), 0xFF);  // uninitialised, as on a GPU
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[i] = i;
  if (run.direct) {
    rng().shuffle(order);
    for (int i : order) {
      run.current = i;
      (*run.body)();
    }
    run.current = -1;
    return;
  }
  while (true) {
    rng().shuffle(order);
    for (int i : order) {
      run.current = i;
      run.fibers[i].wait = Wait::running;
      mt_emu_switch(&run.scheduler_sp, run.fibers[i].sp);
      if (run.error) {
        run.current = -1;
        std::rethrow_exception(run.error);
      }
    }
    run.current = -1;
    order = release(run);
    if (order.empty()) break;
  }
}

}  // namespace

ThreadState& current() { return g_run && g_run->current >= 0 ? g_run->fibers[g_run->current].state : g_host; }

void sync_threads() { park(Wait::block, 0); }

void sync_warp(unsigned mask) { park(Wait::warp, mask); }

int lane_id() { return linear(me().state) % 32; }

// One barrier per shuffle: deposits alternate between two slots, and a lane cannot deposit into
// shuffle r + 2's slot (the one shuffle r used) before every lane has passed shuffle r + 1's
// barrier, that is, after every lane has read its value of shuffle r.
uint64_t warp_exchange(unsigned mask, uint64_t value, int from_lane) {
  Fiber& f = me();
  const uint64_t round = ++f.exchanges;
  f.deposit[round & 1] = value;
  park(Wait::warp, mask);
  const int self = g_run->current, source = self - self % 32 + from_lane;
  // The source may already have deposited its next shuffle's value (into the other slot).
  const uint64_t theirs = source < static_cast<int>(g_run->fibers.size()) ? g_run->fibers[source].exchanges : 0;
  if ((theirs != round && theirs != round + 1) || !((mask >> from_lane) & 1u))
    fail("lane " + std::to_string(self % 32) + " of warp " + std::to_string(self / 32) + " shuffles from lane " +
         std::to_string(from_lane) + ", which did not take part (exited, outside the mask, or past the block)");
  return g_run->fibers[source].deposit[round & 1];
}

unsigned char* dynamic_shared_memory() {
  if (!g_run) throw std::logic_error("[cuda emulation] dynamic shared memory outside a kernel");
  return g_run->dynamic_smem.data();
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
  if (g_run) throw std::logic_error("[cuda emulation] a kernel launched another kernel");
  // Kernels known to have no barriers, by the type of their launch's body (one per launch site and
  // template instantiation).
  static std::set<std::type_index> barrier_free;
  static const bool always_fibers = std::getenv("MT_CUDA_EMU_FIBERS") != nullptr;
  const std::type_index kind(body.target_type());
  BlockRun run;
  run.name = name;
  run.body = &body;
  run.direct = !always_fibers && barrier_free.count(kind) > 0;
  run.dynamic_smem.resize(smem);
  std::vector<uint3> blocks;
  blocks.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
  rng().shuffle(blocks);
  g_run = &run;
  try {
    for (const uint3& b : blocks) run_block(run, grid, block, b);
  } catch (...) {
    g_run = nullptr;
    throw;
  }
  g_run = nullptr;
  if (!run.direct && !run.parked) barrier_free.insert(kind);
}

}  // namespace mt_emu
