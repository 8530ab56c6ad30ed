// A small CPU execution model of the CUDA programming model, so that the kernel bodies in
// csrc/cuda/*_kernels.cuh run (and are tested) on machines without a GPU.
//
// Under nvcc this header only defines the portable launch macros. With a host compiler it also
// provides what the kernels use: dim3/uint3, threadIdx/blockIdx/blockDim/gridDim, __shared__
// storage per block, __syncthreads(), warp shuffles and votes, atomics, vector types with their
// alignment and __ldg.
//
// Execution: blocks run one after another; the threads of a block are cooperative contexts
// (ucontext fibers with their own stacks) that run in thread order until they reach a barrier
// (__syncthreads, or a warp collective such as a shuffle) and switch there. A thread that reads
// shared memory another thread has not yet written (a missing barrier) therefore reads stale data,
// as on the device. Barrier divergence (some threads waiting at __syncthreads, others at a warp
// collective or having named an exited lane) is reported as an error instead of hanging.
//
// Launch checks are the device's: at most 1024 threads per block (x, y <= 1024, z <= 64), grid
// x < 2^31, y and z <= 65535, static + dynamic shared memory <= 48 KiB; a vector access must be
// aligned to its size ("misaligned address" on the device).
#pragma once

#if defined(__CUDACC__)

#define PF_LAUNCH(cfg, ...) __VA_ARGS__<<<(cfg).grid, (cfg).block, (cfg).smem, (cfg).stream>>>
#define PF_CHECK_ALIGNED(ptr, bytes) ((void)0)
#define PF_EMU 0

#else  // host compiler: the execution model

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define PF_EMU 1

#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared memory: one instance per kernel (per template instantiation) and OS thread. Blocks run
// one after another on one OS thread and their threads are fibers of that thread, so this is
// storage shared by the threads of the running block; like the device it is not cleared between
// blocks.
#define __shared__ static thread_local

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Vector types with the device's size and alignment.
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4 layout");
static_assert(sizeof(uint2) == 8 && alignof(uint2) == 8, "uint2 layout");

using cudaStream_t = struct PfEmuStream*;

namespace pf_emu {

// The planted bugs the tests use to show that the suite catches them.
enum Plant : int { kNoPlant = 0, kNoBarriers = 1, kShiftThreadIndex = 2 };

struct Options {
  int plant = kNoPlant;
};
Options& options();

[[noreturn]] void fail(const std::string& what);

// Per-thread (fiber) state of the running block.
struct ThreadState {
  uint3 tid;
  int linear;
};
extern thread_local ThreadState* current;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim, grid_dim;

inline uint3 thread_idx() {
  uint3 t = current->tid;
  if (options().plant == kShiftThreadIndex) t.x += 1;  // planted bug: off-by-one thread index
  return t;
}
inline unsigned lane_id() { return static_cast<unsigned>(current->linear) & 31u; }

void syncthreads();
// Warp collective: every lane named in `mask` deposits 8 bytes; returns after all of them have.
// `read(lane)` then gives the deposit of `lane` for this collective.
void warp_exchange(unsigned mask, const void* value, size_t bytes);
const void* warp_slot(unsigned lane);

void check_aligned(const void* p, size_t bytes, const char* what);

// Runs body() as every thread of every block of `grid` x `block` (after the device's checks).
void launch(const dim3& grid, const dim3& block, size_t smem, size_t static_smem,
            const char* name, const std::function<void()>& body);

// Launch record (kernel name and configuration), for tests to see which variants ran.
void record(const std::string& line);
std::vector<std::string>& launch_log();

// The memory-access model (off unless a test or scripts/cuda_memory_report.py turns it on).
// Every global load and store of the kernels (common.cuh: load_global/store_global,
// load_vec/store_vec) reports its source site, address and size. The k-th execution of a site by
// the lanes of one warp is one request of the device (SIMT: the warp issues the instruction once
// for its active lanes); per request the model counts the 32-byte sectors it touches, the unit
// in which the device moves global memory, against the fewest sectors its distinct bytes fit in.
// Per launch it also records every distinct byte read and written (the kernel's footprint).
// memory_trace() returns the launches traced since the last call, as JSON
// (scripts/cuda_memory_report.py, tests/test_cuda_emu_memory.py).
extern bool g_trace_on;
void trace_access(const char* file, int line, int sub, const void* p, size_t bytes, bool store);
inline void trace_global(const char* file, int line, int sub, const void* p, size_t bytes,
                         bool store) {
  if (g_trace_on) trace_access(file, line, sub, p, bytes, store);
}
void set_memory_trace(bool on);
std::string memory_trace();

template <typename T>
inline T shfl_impl(unsigned mask, T v, int src_of_me_flag, int arg, int width, int mode) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of > 8 bytes");
  warp_exchange(mask, &v, sizeof(T));
  const int lane = static_cast<int>(lane_id());
  const int base = lane & ~(width - 1), in = lane & (width - 1);
  int src = lane;
  switch (mode) {
    case 0: src = base + (arg & (width - 1)); break;                  // __shfl_sync
    case 1: src = in >= arg ? lane - arg : lane; break;               // __shfl_up_sync
    case 2: src = in + arg < width ? lane + arg : lane; break;        // __shfl_down_sync
    default: src = base + ((in ^ arg) & (width - 1)); break;          // __shfl_xor_sync
  }
  (void)src_of_me_flag;
  if (!((mask >> src) & 1u)) src = lane;  // reading a lane outside mask is undefined; keep own
  T out;
  std::memcpy(&out, warp_slot(static_cast<unsigned>(src)), sizeof(T));
  return out;
}

}  // namespace pf_emu

#define threadIdx (::pf_emu::thread_idx())
#define blockIdx (::pf_emu::block_idx)
#define blockDim (::pf_emu::block_dim)
#define gridDim (::pf_emu::grid_dim)

inline void __syncthreads() { ::pf_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  int dummy = 0;
  ::pf_emu::warp_exchange(mask, &dummy, sizeof dummy);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::pf_emu::shfl_impl(mask, v, 0, src, width, 0);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::pf_emu::shfl_impl(mask, v, 0, static_cast<int>(delta), width, 1);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::pf_emu::shfl_impl(mask, v, 0, static_cast<int>(delta), width, 2);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::pf_emu::shfl_impl(mask, v, 0, lane_mask, width, 3);
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  const unsigned v = pred ? 1u : 0u;
  ::pf_emu::warp_exchange(mask, &v, sizeof v);
  unsigned out = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if ((mask >> l) & 1u) {
      unsigned b;
      std::memcpy(&b, ::pf_emu::warp_slot(l), sizeof b);
      out |= b << l;
    }
  }
  return out;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// Atomics: the threads of a block are cooperative and blocks run in turn, so a plain
// read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}

// Read-only load; a vector type must be aligned to its size, as on the device.
template <typename T>
inline T __ldg(const T* p) {
  ::pf_emu::check_aligned(p, alignof(T), "__ldg");
  return *p;
}

// Store to global memory with the default (write-back) cache policy: STG on the device, where a
// plain store through a pointer the compiler cannot place in global memory is a generic ST.
template <typename T>
inline void __stwb(T* p, T v) {
  ::pf_emu::check_aligned(p, alignof(T), "__stwb");
  *p = v;
}

#define PF_CHECK_ALIGNED(ptr, bytes) ::pf_emu::check_aligned((ptr), (bytes), "vector access")

namespace pf_emu {
// PF_LAUNCH(cfg, kernel)(args...): the emulated <<<grid, block, smem, stream>>>.
template <typename Cfg, typename... Params>
struct Launcher {
  const Cfg& cfg;
  void (*kernel)(Params...);
  const char* name;
  template <typename... Args>
  void operator()(Args&&... args) const {
    // Arguments are copied once, as the device copies them into parameter space.
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    auto fn = kernel;
    launch(cfg.grid, cfg.block, cfg.smem, cfg.static_smem, name,
           [&params, fn] { std::apply(fn, params); });
  }
};
template <typename Cfg, typename... Params>
Launcher<Cfg, Params...> make_launcher(const Cfg& cfg, void (*kernel)(Params...), const char* name) {
  return Launcher<Cfg, Params...>{cfg, kernel, name};
}
}  // namespace pf_emu

#define PF_LAUNCH(cfg, ...) ::pf_emu::make_launcher((cfg), &__VA_ARGS__, #__VA_ARGS__)

#endif  // __CUDACC__
