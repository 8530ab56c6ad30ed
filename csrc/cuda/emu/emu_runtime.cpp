// The scheduler of the CPU execution model (see cuda_emu.h).
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <unordered_map>
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

// ---- memory-access model: types
struct SiteKey {
  const char* file;
  int line, sub;
  bool store;
  bool operator==(const SiteKey& o) const {
    return file == o.file && line == o.line && sub == o.sub && store == o.store;
  }
};
struct SiteKeyHash {
  size_t operator()(const SiteKey& k) const {
    return std::hash<const void*>()(k.file) ^ (size_t(k.line) * 1000003u) ^ (size_t(k.sub) << 20) ^
           size_t(k.store);
  }
};
// One request: the k-th execution of a site by the lanes of one warp.
struct ReqKey {
  int warp;
  SiteKey site;
  uint32_t occurrence;
  bool operator==(const ReqKey& o) const {
    return warp == o.warp && occurrence == o.occurrence && site == o.site;
  }
};
struct ReqKeyHash {
  size_t operator()(const ReqKey& k) const {
    return SiteKeyHash()(k.site) ^ (size_t(k.warp) * 7919u) ^ (size_t(k.occurrence) << 32);
  }
};
struct Access {
  uint64_t addr;
  uint32_t bytes;
};
struct SiteStats {
  uint64_t requests = 0, lane_accesses = 0, bytes = 0, unique_bytes = 0, sectors = 0;
  uint64_t min_sectors = 0;  // the fewest sectors the requests' distinct bytes could lie in
  uint64_t max_sectors = 0;
};

struct Fiber {
  ThreadState ts;
  std::unordered_map<SiteKey, uint32_t, SiteKeyHash> occurrences;  // memory-access model
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
  std::unordered_map<ReqKey, std::vector<Access>, ReqKeyHash> requests;  // memory-access model
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

// ---- memory-access model: state and folding
struct LaunchTrace {
  std::string kernel, variant;
  dim3 grid, block;
  std::unordered_map<SiteKey, SiteStats, SiteKeyHash> sites;  // by source line (sub = 0)
  std::vector<Access> loads, stores;                          // every lane access
};
LaunchTrace* g_launch_trace = nullptr;  // the launch being traced
std::vector<std::string> g_trace_json;  // launches traced since the last memory_trace()
std::string g_variant;                  // the variant line the launcher recorded last

// Distinct bytes and distinct 32-byte sectors of a set of accesses (sorted in place).
void footprint(std::vector<Access>& v, uint64_t& bytes, uint64_t& sectors) {
  std::sort(v.begin(), v.end(), [](const Access& a, const Access& b) { return a.addr < b.addr; });
  bytes = sectors = 0;
  uint64_t end = 0, next_sector = 0;  // first byte / sector not yet counted
  for (const Access& a : v) {
    const uint64_t lo = std::max(a.addr, end), hi = a.addr + a.bytes;
    if (hi > lo) bytes += hi - lo;
    end = std::max(end, hi);
    const uint64_t s0 = std::max(a.addr >> 5, next_sector), s1 = ((hi - 1) >> 5) + 1;
    if (s1 > s0) sectors += s1 - s0;
    next_sector = std::max(next_sector, s1);
  }
}

// Folds the requests of the block just run into the launch's per-site counts.
void fold_block(Block& b) {
  if (g_launch_trace == nullptr) return;
  for (auto& [key, lanes] : b.requests) {
    SiteStats& st = g_launch_trace->sites[SiteKey{key.site.file, key.site.line, 0, key.site.store}];
    uint64_t unique = 0, sectors = 0;
    for (const Access& a : lanes) st.bytes += a.bytes;
    footprint(lanes, unique, sectors);
    st.requests += 1;
    st.lane_accesses += lanes.size();
    st.unique_bytes += unique;
    st.sectors += sectors;
    st.min_sectors += (unique + 31) / 32;
    st.max_sectors = std::max(st.max_sectors, sectors);
  }
  b.requests.clear();
}

std::string json_string(const std::string& in) {
  std::string out = "\"";
  for (char ch : in) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

std::string json_dims(const dim3& d) {
  return "[" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + "]";
}

std::string launch_json(LaunchTrace& lt) {
  uint64_t lb, ls, sb, ss;
  footprint(lt.loads, lb, ls);
  footprint(lt.stores, sb, ss);
  std::vector<std::pair<std::string, const SiteStats*>> rows;
  for (const auto& [key, st] : lt.sites) {
    std::string file = key.file;
    const auto slash = file.find_last_of('/');
    if (slash != std::string::npos) file = file.substr(slash + 1);
    char head[256];
    std::snprintf(head, sizeof head, "{\"site\": %s, \"line\": %d, \"op\": \"%s\"",
                  json_string(file + ":" + std::to_string(key.line)).c_str(), key.line,
                  key.store ? "store" : "load");
    rows.emplace_back(head, &st);
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string out = "{\"kernel\": " + json_string(lt.kernel) + ", \"variant\": " +
                    json_string(lt.variant) + ", \"grid\": " + json_dims(lt.grid) +
                    ", \"block\": " + json_dims(lt.block) + ", \"footprint\": {\"load_bytes\": " +
                    std::to_string(lb) + ", \"load_sectors\": " + std::to_string(ls) +
                    ", \"store_bytes\": " + std::to_string(sb) + ", \"store_sectors\": " +
                    std::to_string(ss) + "}, \"sites\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const SiteStats& st = *rows[i].second;
    out += (i ? ", " : "") + rows[i].first + ", \"requests\": " + std::to_string(st.requests) +
           ", \"lane_accesses\": " + std::to_string(st.lane_accesses) + ", \"bytes\": " +
           std::to_string(st.bytes) + ", \"unique_bytes\": " + std::to_string(st.unique_bytes) +
           ", \"sectors\": " + std::to_string(st.sectors) + ", \"min_sectors\": " +
           std::to_string(st.min_sectors) + ", \"max_sectors\": " +
           std::to_string(st.max_sectors) + "}";
  }
  return out + "]}";
}

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
    f.occurrences.clear();
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

bool g_trace_on = false;

void set_memory_trace(bool on) {
  g_trace_on = on;
  if (!on) g_variant.clear();
}

void trace_access(const char* file, int line, int sub, const void* p, size_t bytes, bool store) {
  Block* b = g_block;
  if (b == nullptr || b->running == nullptr || g_launch_trace == nullptr) return;
  Fiber* f = b->running;
  const SiteKey key{file, line, sub, store};
  const uint32_t occurrence = f->occurrences[key]++;
  const Access a{reinterpret_cast<uint64_t>(p), static_cast<uint32_t>(bytes)};
  b->requests[ReqKey{f->ts.linear / 32, key, occurrence}].push_back(a);
  (store ? g_launch_trace->stores : g_launch_trace->loads).push_back(a);
}

std::string memory_trace() {
  std::string out = "[";
  for (size_t i = 0; i < g_trace_json.size(); ++i) out += (i ? ",\n" : "") + g_trace_json[i];
  g_trace_json.clear();
  return out + "]";
}

std::vector<std::string>& launch_log() {
  static std::vector<std::string> log;
  return log;
}

void record(const std::string& line) {
  auto& log = launch_log();
  if (log.size() > 100000) log.erase(log.begin(), log.begin() + 50000);
  log.push_back(line);
  if (line.find(" grid=") == std::string::npos) g_variant = line;  // a launcher's variant line
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
  LaunchTrace trace;
  if (g_trace_on) {
    trace.kernel = name;
    trace.variant = g_variant;
    trace.grid = grid;
    trace.block = block;
    g_launch_trace = &trace;
  }
  g_variant.clear();
  std::string error;
  for (unsigned z = 0; z < grid.z && error.empty(); ++z) {
    for (unsigned y = 0; y < grid.y && error.empty(); ++y) {
      for (unsigned x = 0; x < grid.x && error.empty(); ++x) {
        block_idx = uint3{x, y, z};
        run_block(b);
        fold_block(b);
        if (!b.error.empty()) {
          error = b.error + " (" + name + ", block (" + std::to_string(x) + ", " +
                  std::to_string(y) + ", " + std::to_string(z) + "))";
        }
      }
    }
  }
  g_block = nullptr;
  if (g_launch_trace != nullptr) {
    g_launch_trace = nullptr;
    if (error.empty()) g_trace_json.push_back(launch_json(trace));
  }
  if (!error.empty()) fail(error);
}

}  // namespace pf_emu
