// Pieces shared by the CUDA kernels and their launchers, compiled by nvcc and (against the CPU
// execution model in emu/cuda_emu.h) by the host compiler: the launch configuration type, vector
// accesses of 4, 8 or 16 bytes, warp and block reductions, and the test hooks of the launch
// configuration.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu/cuda_emu.h"

// The SM architecture of the device pass being compiled (e.g. 900 for sm_90); 0 in nvcc's host
// pass and in the CPU execution model. For choices that ptxas' register allocation makes differ
// per architecture (the kernels' __launch_bounds__).
#if defined(__CUDA_ARCH__)
#define PF_CUDA_ARCH __CUDA_ARCH__
#else
#define PF_CUDA_ARCH 0
#endif

namespace pyframepred {
namespace cuda {

// One kernel launch: what <<<grid, block, smem, stream>>> takes, plus the static shared memory
// of the kernel (for the emulated launch check; the device knows it from the binary).
struct LaunchCfg {
  dim3 grid{1, 1, 1};
  dim3 block{1, 1, 1};
  size_t smem = 0;
  size_t static_smem = 0;
  cudaStream_t stream = nullptr;
};

// Knobs of the launch configuration that tests set: force the 64-bit index variants without
// allocating 2^31 elements. Off in normal use.
struct LaunchOptions {
  bool force_index64 = false;
};
inline LaunchOptions& launch_options() {
  static LaunchOptions o;
  return o;
}

// Host: a run-time choice of the launch configuration as a compile-time one, for picking the
// kernel variant. dispatch_bool calls f(std::true_type{}) or f(std::false_type{});
// dispatch_index calls f(int32_t{}) or f(int64_t{}) (the variant's index type: decltype of it).
template <typename F>
inline void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <typename F>
inline void dispatch_index(bool index32, F&& f) {
  if (index32) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// Where in the kernel source a global-memory access is (file, line, and which part of an
// unrolled loop or a multi-access helper), for the memory-access model of the CPU execution
// model (emu/cuda_emu.h), which groups the accesses of a warp into the device's requests by it.
// A defaulted Site argument names its caller's line. Under nvcc it is empty and compiles away.
struct Site {
#if PF_EMU
  const char* file;
  int line;
  int sub = 0;
  constexpr Site(const char* f = __builtin_FILE(), int l = __builtin_LINE()) : file(f), line(l) {}
  // Part k (0 <= k < 15) of this access: another instruction of the same source line.
  constexpr Site part(int k) const {
    Site s = *this;
    s.sub = sub * 16 + k + 1;
    return s;
  }
  static constexpr Site at(int k, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return Site(f, l).part(k);
  }
#else
  __host__ __device__ constexpr Site() {}
  __host__ __device__ constexpr Site part(int) const { return *this; }
  static __host__ __device__ constexpr Site at(int) { return Site(); }
#endif
};

#if PF_EMU
#define PF_TRACE_GLOBAL(site, ptr, bytes, store) \
  ::pf_emu::trace_global((site).file, (site).line, (site).sub, (ptr), (bytes), (store))
#else
#define PF_TRACE_GLOBAL(site, ptr, bytes, store) ((void)0)
#endif

// A scalar global load and store. Every global access of the kernels goes through these or
// load_vec/store_vec, so the execution model sees all of them.
template <typename T>
__device__ __forceinline__ T load_global(const T* p, Site site = {}) {
  PF_TRACE_GLOBAL(site, p, sizeof(T), false);
  return *p;
}

template <typename T>
__device__ __forceinline__ void store_global(T* p, T v, Site site = {}) {
  PF_TRACE_GLOBAL(site, p, sizeof(T), true);
  *p = v;
}

// The integer type of a vector access of `Bytes` bytes.
template <int Bytes>
struct VecBits;
template <>
struct VecBits<2> { using type = unsigned short; };
template <>
struct VecBits<4> { using type = unsigned int; };
template <>
struct VecBits<8> { using type = uint2; };
template <>
struct VecBits<16> { using type = uint4; };

// V consecutive elements moved by one load/store instruction (V * sizeof(T) <= 16 bytes).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p, Site site = {}) {
  using B = typename VecBits<sizeof(T) * V>::type;
  PF_CHECK_ALIGNED(p, sizeof(B));
  PF_TRACE_GLOBAL(site, p, sizeof(B), false);
  const B bits = __ldg(reinterpret_cast<const B*>(p));
  Vec<T, V> out;
  memcpy(&out, &bits, sizeof(B));
  return out;
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, V>& x, Site site = {}) {
  using B = typename VecBits<sizeof(T) * V>::type;
  PF_CHECK_ALIGNED(p, sizeof(B));
  PF_TRACE_GLOBAL(site, p, sizeof(B), true);
  B bits;
  memcpy(&bits, &x, sizeof(B));
  __stwb(reinterpret_cast<B*>(p), bits);  // a global store (STG), also through a derived pointer
}

constexpr unsigned kFullMask = 0xffffffffu;

// Sum over aligned segments of `width` lanes (a power of two <= 32) of a warp, by butterfly
// shuffles: every lane of the segment gets the segment's sum, in an order fixed by the width.
template <typename A>
__device__ __forceinline__ A warp_sum(A v, int width = 32) {
  for (int d = width / 2; d > 0; d /= 2) v += __shfl_xor_sync(kFullMask, v, d, width);
  return v;
}

// Sum of `v` over the kThreads threads of a block (kThreads a multiple of 32, <= 1024), valid in
// thread 0, in a fixed order (deterministic). Every thread of the block must call it; `scratch`
// is shared memory of at least kThreads / 32 values, and a __syncthreads() must separate two
// calls that reuse it (as for cub::BlockReduce).
template <int kThreads, typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block_sum: whole warps");
  constexpr int kWarps = kThreads / 32;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  v = warp_sum(v);
  if ((t & 31) == 0) scratch[t >> 5] = v;
  __syncthreads();
  A total = A(0);
  if (t < 32) {
    total = t < kWarps ? scratch[t] : A(0);
    total = warp_sum(total);
  }
  return total;
}

}  // namespace cuda
}  // namespace pyframepred
