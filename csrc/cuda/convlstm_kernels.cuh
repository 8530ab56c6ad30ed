// Device code of the fused ConvLSTM cell (forward and backward), compiled by nvcc for the GPU and
// by the host compiler against the CPU execution model (emu/cuda_emu.h) in the tests.
//
// Every 4-d operand is seen as (N, K, P = H*W) with its own strides. A block of kThreads threads
// is a (lx, ly) tile: x runs along the contiguous dimension (positions P in NCHW memory, channels
// in channels_last), y along the other one, and each thread moves V consecutive elements of the
// contiguous dimension with one vector load/store (V = 16 bytes / element size for float and
// double, 4 for 16-bit types; V = 1 is the strided/scalar variant). Every thread keeps the same
// channel(s) for its whole life, iterating kIter steps along the positions and over the samples
// (grid z), so the bias/peephole gradient sums stay in registers in the hot loop and are reduced
// once at the end: NCHW by warp shuffles within the lanes of one channel, channels_last through
// shared memory across the tile's rows; each block writes one row of per-block partial sums
// (no atomics, fixed order: deterministic) that a small pass sums.
//
// The per-element math is convlstm.h, exactly what the CPU kernels run.
#pragma once

#include <ATen/OpMathType.h>

#include "common.cuh"
#include "convlstm.h"

namespace pyframepred {
namespace cuda {
namespace convlstm {

constexpr int kThreads = 256;
// Resident blocks per SM that the register allocation must allow (__launch_bounds__' second
// argument; an sm_80/sm_90 SM holds 2048 threads and 64 K registers): 4 x 256 threads (half
// occupancy, at most 64 registers) where a variant fits in 64 without spilling, else 3 (80
// registers), else 2 (128), as ptxas reports for sm_80 and sm_90 (PF_CUDA_ARCH where the two
// differ). What needs more: vector variants with peepholes in channels_last (V channels of 3
// peephole weights, and in the backward 7 gradient sums, stay live), float64, and 64-bit indices
// (operands past 2^31 elements). scripts/ptxas_report.py checks the result: no spills, occupancy
// >= 1/4.
template <typename scalar_t, typename index_t, bool kCL, bool kPeep, int V>
constexpr int min_blocks_forward() {
  constexpr bool wide = sizeof(index_t) == 8, f64 = sizeof(scalar_t) == 8;
  constexpr bool cl_peep = kCL && kPeep && V > 1;
  if (V > 1 && ((cl_peep && (wide || f64)) || (wide && f64))) return 2;
  if (V > 1 && (wide || f64 || cl_peep)) return 3;
  return 4;
}

template <typename scalar_t, typename index_t, bool kCL, bool kPeep, int V>
constexpr int min_blocks_backward() {
  constexpr bool wide = sizeof(index_t) == 8, f64 = sizeof(scalar_t) == 8;
  if (V == 1) return wide && (f64 || PF_CUDA_ARCH >= 900) ? 3 : 4;
  if (f64 || (kPeep && (kCL || wide))) return 2;
  if (wide || (kPeep && sizeof(scalar_t) == 2)) return 3;
  return 4;
}

constexpr int kIter = 4;    // steps along the positions per thread and sample
constexpr int kParams = 7;  // rows of grad_params: bias i, f, g, o; peephole i, f, o

// Vector width (elements per access) of the vector variant.
template <typename scalar_t>
constexpr int vec_width() {
  return sizeof(scalar_t) >= 4 ? 16 / static_cast<int>(sizeof(scalar_t)) : 4;
}

// A strided (N, K, P) operand (element strides).
template <typename T, typename index_t>
struct Operand {
  T* data;
  index_t sN, sC, sP;
};

// The V elements of `o` along the contiguous dimension at (n, ch, p), in the accumulation type.
// In the vector variant an operand either has stride 1 there (one vector load) or stride 0 (an
// expanded tensor: one scalar load, broadcast).
template <int V, bool kCL, typename T, typename index_t, typename A>
__device__ __forceinline__ void load_elems(const Operand<const T, index_t>& o, index_t off,
                                           A (&out)[V], Site site = {}) {
  const T* ptr = o.data + off;
  const index_t fast = kCL ? o.sC : o.sP;
  if (V == 1 || fast == 0) {
    const A v = static_cast<A>(load_global(ptr, site));
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = v;
  } else {
    const Vec<T, V> x = load_vec<T, V>(ptr, site);
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = static_cast<A>(x.v[j]);
  }
}

template <int V, typename T, typename A>
__device__ __forceinline__ void store_elems(T* ptr, const A (&in)[V], Site site = {}) {
  if constexpr (V == 1) {
    store_global(ptr, static_cast<T>(in[0]), site);
  } else {
    Vec<T, V> x;
#pragma unroll
    for (int j = 0; j < V; ++j) x.v[j] = static_cast<T>(in[j]);
    store_vec<T, V>(ptr, x, site);
  }
}

// The CV parameters of the thread's channels in one row of a (rows, C) parameter tensor: one
// vector load where the row lies aligned for it (the channels_last vector variants; the check is
// uniform across the grid), else one load per channel.
template <int CV, typename T, typename A>
__device__ __forceinline__ void load_params(const T* row, A (&out)[CV], Site site = {}) {
  if constexpr (CV > 1) {
    if (reinterpret_cast<uintptr_t>(row) % (sizeof(T) * CV) == 0) {
      const Vec<T, CV> v = load_vec<T, CV>(row, site.part(0));
#pragma unroll
      for (int j = 0; j < CV; ++j) out[j] = static_cast<A>(v.v[j]);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < CV; ++j) out[j] = static_cast<A>(load_global(row + j, site.part(1 + j)));
}

template <typename index_t>
__device__ __forceinline__ index_t offset_of(index_t sN, index_t sC, index_t sP, index_t n,
                                             index_t ch, index_t p) {
  return n * sN + ch * sC + p * sP;
}

// Channels among a thread's V elements: V in channels_last (V consecutive channels), 1 in NCHW
// (V positions of one channel). Per-channel values (bias, peepholes, their gradient sums) are
// kept once per channel, not once per element: fewer registers, more resident warps.
template <int V, bool kCL>
constexpr int channels_per_thread() {
  return kCL ? V : 1;
}

// The thread's first channel and first position in its block, and the position step.
template <int V, bool kCL, typename index_t>
struct TileCoords {
  index_t ch, p0, pstep;
  __device__ __forceinline__ TileCoords() {
    const index_t lx = blockDim.x, ly = blockDim.y;
    if constexpr (kCL) {
      ch = (static_cast<index_t>(blockIdx.y) * lx + threadIdx.x) * V;
      p0 = static_cast<index_t>(blockIdx.x) * ly * kIter + threadIdx.y;
      pstep = ly;
    } else {
      ch = static_cast<index_t>(blockIdx.y) * ly + threadIdx.y;
      p0 = (static_cast<index_t>(blockIdx.x) * lx * kIter + threadIdx.x) * V;
      pstep = lx * V;
    }
  }
};

// scalar_t: the gates' and h's type; state_t: c's and the parameters' (scalar_t, or float with
// float16/bfloat16 gates under mixed precision).
template <typename scalar_t, typename state_t, typename index_t, bool kCL, bool kPeep, int V>
__global__ void
__launch_bounds__(kThreads, (min_blocks_forward<scalar_t, index_t, kCL, kPeep, V>()))
convlstm_forward_kernel(Operand<const scalar_t, index_t> xg, Operand<const scalar_t, index_t> hg,
                        Operand<const state_t, index_t> cp, Operand<scalar_t, index_t> h,
                        Operand<state_t, index_t> c, Operand<scalar_t, index_t> gates,
                        const state_t* __restrict__ bias, const state_t* __restrict__ peep,
                        bool has_h, bool save, index_t N, index_t C, index_t P) {
  using A = at::opmath_type<scalar_t>;
  const TileCoords<V, kCL, index_t> tc;
  if (tc.ch >= C) return;  // no barrier in this kernel
  // Per-channel parameters of the thread's channels (one in NCHW, V in channels_last).
  constexpr int CV = channels_per_thread<V, kCL>();
  A b[4][CV], w[3][CV];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (bias != nullptr) {
      load_params(bias + (k * C + tc.ch), b[k], Site::at(k));
    } else {
#pragma unroll
      for (int j = 0; j < CV; ++j) b[k][j] = A(0);
    }
  }
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if constexpr (kPeep) {
      load_params(peep + (k * C + tc.ch), w[k], Site::at(k));
    } else {
#pragma unroll
      for (int j = 0; j < CV; ++j) w[k][j] = A(0);
    }
  }
  const index_t gate_x = C * xg.sC, gate_h = C * hg.sC, gate_s = C * gates.sC;
  for (index_t n = blockIdx.z; n < N; n += gridDim.z) {
#pragma unroll
    for (int it = 0; it < kIter; ++it) {
      const index_t p = tc.p0 + it * tc.pstep;
      if (p < P) {
        const index_t ox = offset_of(xg.sN, xg.sC, xg.sP, n, tc.ch, p);
        A g4[4][V], cprev[V];
#pragma unroll
        for (int k = 0; k < 4; ++k) load_elems<V, kCL>(xg, ox + k * gate_x, g4[k]);
        if (has_h) {
          const index_t oh = offset_of(hg.sN, hg.sC, hg.sP, n, tc.ch, p);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            A hv[V];
            load_elems<V, kCL>(hg, oh + k * gate_h, hv);
#pragma unroll
            for (int j = 0; j < V; ++j) g4[k][j] += hv[j];
          }
        }
        load_elems<V, kCL>(cp, offset_of(cp.sN, cp.sC, cp.sP, n, tc.ch, p), cprev);
        A ho[V], co[V], go[4][V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const int cj = kCL ? j : 0;
          convlstm_cell_forward<A, kPeep>(g4[0][j] + b[0][cj], g4[1][j] + b[1][cj],
                                          g4[2][j] + b[2][cj], g4[3][j] + b[3][cj], cprev[j],
                                          w[0][cj], w[1][cj], w[2][cj], go[0][j], go[1][j],
                                          go[2][j], go[3][j], co[j], ho[j]);
        }
        store_elems<V>(h.data + offset_of(h.sN, h.sC, h.sP, n, tc.ch, p), ho);
        store_elems<V>(c.data + offset_of(c.sN, c.sC, c.sP, n, tc.ch, p), co);
        if (save) {
          const index_t os = offset_of(gates.sN, gates.sC, gates.sP, n, tc.ch, p);
#pragma unroll
          for (int k = 0; k < 4; ++k) store_elems<V>(gates.data + os + k * gate_s, go[k]);
        }
      }
    }
  }
}

// Shared memory of the channels_last reduction of the backward kernel.
template <typename scalar_t>
constexpr size_t backward_static_smem() {
  return sizeof(at::opmath_type<scalar_t>) * kThreads * vec_width<scalar_t>();
}

// partial: (gridDim.z * gridDim.x, 7, C) per-block sums of the parameter gradients, or null.
template <typename scalar_t, typename state_t, typename index_t, bool kCL, bool kPeep, int V>
__global__ void
__launch_bounds__(kThreads, (min_blocks_backward<scalar_t, index_t, kCL, kPeep, V>()))
convlstm_backward_kernel(Operand<const scalar_t, index_t> gh, Operand<const state_t, index_t> gc,
                         Operand<const scalar_t, index_t> gates,
                         Operand<const state_t, index_t> cp, Operand<scalar_t, index_t> dgates,
                         Operand<state_t, index_t> dcp, const state_t* __restrict__ peep,
                         at::opmath_type<scalar_t>* __restrict__ partial, index_t N, index_t C,
                         index_t P) {
  using A = at::opmath_type<scalar_t>;
  const TileCoords<V, kCL, index_t> tc;
  const bool active = tc.ch < C;  // inactive threads still take part in the reductions
  constexpr int CV = channels_per_thread<V, kCL>();
  A w[3][CV];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (kPeep && active) {
      load_params(peep + (k * C + tc.ch), w[k], Site::at(k));
    } else {
#pragma unroll
      for (int j = 0; j < CV; ++j) w[k][j] = A(0);
    }
  }
  A q[kParams][CV];  // the parameter gradients' sums, per channel
#pragma unroll
  for (int k = 0; k < kParams; ++k) {
#pragma unroll
    for (int j = 0; j < CV; ++j) q[k][j] = A(0);
  }
  const bool sums = partial != nullptr;
  if (active) {
    const index_t gate_in = C * gates.sC, gate_out = C * dgates.sC;
    for (index_t n = blockIdx.z; n < N; n += gridDim.z) {
#pragma unroll
      for (int it = 0; it < kIter; ++it) {
        const index_t p = tc.p0 + it * tc.pstep;
        if (p < P) {
          const index_t og = offset_of(gates.sN, gates.sC, gates.sP, n, tc.ch, p);
          A gi[V], gf[V], gg[V], go[V], cprev[V], dh[V], dc[V];
          load_elems<V, kCL>(gates, og, gi);
          load_elems<V, kCL>(gates, og + gate_in, gf);
          load_elems<V, kCL>(gates, og + 2 * gate_in, gg);
          load_elems<V, kCL>(gates, og + 3 * gate_in, go);
          load_elems<V, kCL>(cp, offset_of(cp.sN, cp.sC, cp.sP, n, tc.ch, p), cprev);
          load_elems<V, kCL>(gh, offset_of(gh.sN, gh.sC, gh.sP, n, tc.ch, p), dh);
          load_elems<V, kCL>(gc, offset_of(gc.sN, gc.sC, gc.sP, n, tc.ch, p), dc);
          A d[4][V], dcprev[V];
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const int cj = kCL ? j : 0;
            A cn;
            convlstm_cell_backward<A, kPeep>(gi[j], gf[j], gg[j], go[j], cprev[j], dh[j], dc[j],
                                             w[0][cj], w[1][cj], w[2][cj], d[0][j], d[1][j],
                                             d[2][j], d[3][j], dcprev[j], cn);
            if (sums) {
#pragma unroll
              for (int k = 0; k < 4; ++k) q[k][cj] += d[k][j];
              if constexpr (kPeep) {
                q[4][cj] += d[0][j] * cprev[j];
                q[5][cj] += d[1][j] * cprev[j];
                q[6][cj] += d[3][j] * cn;
              }
            }
          }
          const index_t od = offset_of(dgates.sN, dgates.sC, dgates.sP, n, tc.ch, p);
#pragma unroll
          for (int k = 0; k < 4; ++k) store_elems<V>(dgates.data + od + k * gate_out, d[k]);
          store_elems<V>(dcp.data + offset_of(dcp.sN, dcp.sC, dcp.sP, n, tc.ch, p), dcprev);
        }
      }
    }
  }
  if (!sums) return;  // uniform across the grid
  const int lx = blockDim.x, ly = blockDim.y;
  A* out = partial + (static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x) * kParams * C;
  if constexpr (!kCL) {
    // One channel per tile row: its lx lanes are an aligned segment of a warp.
#pragma unroll
    for (int k = 0; k < kParams; ++k) {
      const A s = warp_sum(q[k][0], lx);
      if (threadIdx.x == 0 && active) store_global(out + (k * C + tc.ch), s);
    }
  } else {
    // Channel tc.ch + j is shared by the ly threads of tile column threadIdx.x: sum them through
    // shared memory, one gradient row k at a time, in row order.
    __shared__ A red[kThreads * vec_width<scalar_t>()];
    const int t = threadIdx.y * lx + threadIdx.x;
    const int cols = lx * V;  // channels of the tile
    for (int k = 0; k < kParams; ++k) {
#pragma unroll
      for (int j = 0; j < CV; ++j) red[t * V + j] = q[k][j];
      __syncthreads();
      for (int cj = t; cj < cols; cj += lx * ly) {
        A s = A(0);
        for (int y = 0; y < ly; ++y) s += red[y * cols + cj];
        const index_t ch = static_cast<index_t>(blockIdx.y) * cols + cj;
        if (ch < C) store_global(out + (k * C + ch), s);
      }
      __syncthreads();
    }
  }
}

}  // namespace convlstm
}  // namespace cuda
}  // namespace pyframepred
