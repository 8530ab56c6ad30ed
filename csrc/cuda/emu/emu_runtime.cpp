// The scheduler of the CPU execution model (see cuda_emu.h).
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define PF_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PF_EMU_ASAN 1
#endif
#endif
#ifdef PF_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace pf_emu {

namespace {

constexpr size_t kStackBytes = size_t(256) << 10;
constexpr size_t kMaxSharedBytes = size_t(48) << 10;

enum class State { kReady, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  ThreadState ts;
  State state = State::kReady;
  unsigned warp_mask = 0;  // mask of the pending warp collective
  ucontext_t ctx;
  char* stack = nullptr;
};

struct Warp {
  unsigned char slot[2][32][8];
  unsigned gen = 0;  // collectives completed by this warp (selects the slot buffer)
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  ucontext_t sched;
  const std::function<void()>* body = nullptr;
  std::string error;
  Fiber* running = nullptr;
#ifdef PF_EMU_ASAN
  void* fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

thread_local Block* g_block = nullptr;

// Stacks are kept between launches (one pool per OS thread).
struct StackPool {
  std::vector<char*> stacks;
  ~StackPool() {
    for (char* s : stacks) munmap(s, kStackBytes);
  }
  char* get(size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) fail("cannot map a fiber stack");
      stacks.push_back(static_cast<char*>(p));
    }
    return stacks[i];
  }
};
thread_local StackPool g_stacks;

// Switch from fiber `f` back to the scheduler.
void yield_to_scheduler(Fiber* f, bool exiting) {
  Block* b = g_block;
#ifdef PF_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, b->sched_stack_bottom,
                                 b->sched_stack_size);
  swapcontext(&f->ctx, &b->sched);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)exiting;
  swapcontext(&f->ctx, &b->sched);
#endif
}

void fiber_entry() {
  Block* b = g_block;
  Fiber* f = b->running;
#ifdef PF_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom, &b->sched_stack_size);
#endif
  try {
    (*b->body)();
  } catch (const std::exception& e) {
    if (b->error.empty()) b->error = e.what();
  } catch (...) {
    if (b->error.empty()) b->error = "unknown exception in a kernel thread";
  }
  f->state = State::kDone;
  yield_to_scheduler(f, true);
  std::abort();  // a finished fiber is never resumed
}

void run_fiber(Block& b, Fiber& f) {
  b.running = &f;
  current = &f.ts;
#ifdef PF_EMU_ASAN
  __sanitizer_start_switch_fiber(&b.fake_stack, f.stack, kStackBytes);
  swapcontext(&b.sched, &f.ctx);
  __sanitizer_finish_switch_fiber(b.fake_stack, nullptr, nullptr);
#else
  swapcontext(&b.sched, &f.ctx);
#endif
  current = nullptr;
  b.running = nullptr;
}

std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

void run_block(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::kReady;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  for (auto& w : b.warps) w.gen = 0;
  for (;;) {
    bool ran = false;
    for (int i = 0; i < n && b.error.empty(); ++i) {
      if (b.fibers[i].state == State::kReady) {
        run_fiber(b, b.fibers[i]);
        ran = true;
      }
    }
    if (!b.error.empty()) return;  // suspended fibers are abandoned (their stacks are reused)
    // Release warp collectives whose lanes have all arrived.
    bool released = false;
    for (size_t w = 0; w < b.warps.size(); ++w) {
      unsigned waiting = 0, mask = 0, done = 0;
      bool any = false;
      const int lo = static_cast<int>(w) * 32, hi = std::min(n, lo + 32);
      for (int i = lo; i < hi; ++i) {
        const Fiber& f = b.fibers[i];
        if (f.state == State::kWarpBarrier) {
          if (any && f.warp_mask != mask) {
            b.error = "warp collective with different masks in warp " + std::to_string(w);
            return;
          }
          any = true;
          mask = f.warp_mask;
          waiting |= 1u << (i - lo);
        } else if (f.state == State::kDone) {
          done |= 1u << (i - lo);
        }
      }
      if (!any) continue;
      if (mask & done) {
        b.error = "warp collective names a lane that has exited (warp " + std::to_string(w) +
                  ", mask " + std::to_string(mask) + ")";
        return;
      }
      if ((waiting & mask) == mask) {
        for (int i = lo; i < hi; ++i) {
          if (b.fibers[i].state == State::kWarpBarrier) b.fibers[i].state = State::kReady;
        }
        b.warps[w].gen++;
        released = true;
      }
    }
    if (released) continue;
    int at_barrier = 0, live = 0, at_warp = 0;
    for (const Fiber& f : b.fibers) {
      if (f.state != State::kDone) ++live;
      if (f.state == State::kBlockBarrier) ++at_barrier;
      if (f.state == State::kWarpBarrier) ++at_warp;
    }
    if (live == 0) return;
    if (at_barrier == live) {
      for (Fiber& f : b.fibers) {
        if (f.state == State::kBlockBarrier) f.state = State::kReady;
      }
      continue;
    }
    if (!ran) {
      b.error = "barrier divergence: " + std::to_string(at_barrier) + " thread(s) at __syncthreads, " +
                std::to_string(at_warp) + " at a warp collective, " +
                std::to_string(n - live) + " exited";
      return;
    }
  }
}

}  // namespace

thread_local ThreadState* current = nullptr;
thread_local uint3 block_idx{0, 0, 0};
thread_local dim3 block_dim, grid_dim;

Options& options() {
  static Options o;
  return o;
}

void fail(const std::string& what) { throw std::runtime_error("CUDA emulation: " + what); }

void syncthreads() {
  if (options().plant == kNoBarriers) return;  // planted bug: barriers removed
  Block* b = g_block;
  Fiber* f = b->running;
  f->state = State::kBlockBarrier;
  yield_to_scheduler(f, false);
}

void warp_exchange(unsigned mask, const void* value, size_t bytes) {
  Block* b = g_block;
  Fiber* f = b->running;
  const unsigned lane = static_cast<unsigned>(f->ts.linear) & 31u;
  if (!((mask >> lane) & 1u)) fail("warp collective called by a lane outside its mask");
  Warp& w = b->warps[f->ts.linear / 32];
  std::memset(w.slot[w.gen & 1][lane], 0, 8);
  std::memcpy(w.slot[w.gen & 1][lane], value, bytes);
  f->warp_mask = mask;
  f->state = State::kWarpBarrier;
  yield_to_scheduler(f, false);
}

const void* warp_slot(unsigned lane) {
  Block* b = g_block;
  const Fiber* f = b->running;
  const Warp& w = b->warps[f->ts.linear / 32];
  return w.slot[(w.gen - 1) & 1][lane];  // the collective just completed
}

void check_aligned(const void* p, size_t bytes, const char* what) {
  if (bytes > 1 && reinterpret_cast<uintptr_t>(p) % bytes != 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "misaligned address %p in a %zu-byte %s", p, bytes, what);
    fail(buf);
  }
}

std::vector<std::string>& launch_log() {
  static std::vector<std::string> log;
  return log;
}

void record(const std::string& line) {
  auto& log = launch_log();
  if (log.size() > 100000) log.erase(log.begin(), log.begin() + 50000);
  log.push_back(line);
}

void launch(const dim3& grid, const dim3& block, size_t smem, size_t static_smem, const char* name,
            const std::function<void()>& body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    fail(std::string(name) + ": invalid configuration argument (a zero grid or block dimension): grid " +
         dims(grid) + ", block " + dims(block));
  if (threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    fail(std::string(name) + ": invalid configuration argument: block " + dims(block) +
         " (at most 1024 threads, x, y <= 1024, z <= 64)");
  if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u)
    fail(std::string(name) + ": invalid configuration argument: grid " + dims(grid) +
         " (x < 2^31, y, z <= 65535)");
  if (smem + static_smem > kMaxSharedBytes)
    fail(std::string(name) + ": too much shared memory: " + std::to_string(smem + static_smem) +
         " bytes (48 KiB without opt-in)");
  if (g_block != nullptr) fail("nested kernel launch");
  record(std::string(name) + " grid=" + dims(grid) + " block=" + dims(block));
  Block b;
  b.body = &body;
  b.fibers.resize(threads);
  b.warps.resize((threads + 31) / 32);
  for (uint64_t i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    f.stack = g_stacks.get(i);
    f.ts.linear = static_cast<int>(i);
    f.ts.tid = uint3{static_cast<unsigned>(i % block.x),
                     static_cast<unsigned>((i / block.x) % block.y),
                     static_cast<unsigned>(i / (uint64_t(block.x) * block.y))};
  }
  grid_dim = grid;
  block_dim = block;
  g_block = &b;
  std::string error;
  for (unsigned z = 0; z < grid.z && error.empty(); ++z) {
    for (unsigned y = 0; y < grid.y && error.empty(); ++y) {
      for (unsigned x = 0; x < grid.x && error.empty(); ++x) {
        block_idx = uint3{x, y, z};
        run_block(b);
        if (!b.error.empty()) {
          error = b.error + " (" + name + ", block (" + std::to_string(x) + ", " +
                  std::to_string(y) + ", " + std::to_string(z) + "))";
        }
      }
    }
  }
  g_block = nullptr;
  if (!error.empty()) fail(error);
}

}  // namespace pf_emu
