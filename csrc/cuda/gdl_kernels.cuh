// Device code of the fused gradient difference loss, compiled by nvcc for the GPU and by the host
// compiler against the CPU execution model (emu/cuda_emu.h) in the tests.
//
// Work is split in warp items: (image b, strip of 32 * kV columns, band of R rows). Lane l of a
// warp owns the kV consecutive columns x0 = strip * 32 * kV + l * kV ... x0 + kV - 1 and walks
// down the band one row at a time, keeping the row above (forward) or the coefficients of the
// vertical pairs above (backward) in registers, so every element is loaded once; the left and
// right neighbours come from the adjacent lanes by warp shuffles (lanes 0 and 31 load theirs).
// Rows whose W stride is 1 and that are suitably aligned are read (and gradients written) with
// one vector access per lane (two for double); any other layout is read element by element
// through its strides. Interleaved channels_last planes of 3 channels (gdl_host.h: rows of W * 3
// values whose horizontal pairs are 3 apart, for the mean and the sum) take a third variant of
// the vector one: a lane's left neighbours are 3 columns back, in its own registers or the
// previous lane's. The next row is loaded before the current one is processed, to keep loads
// in flight. The per-element math is the shared gdl.h, exactly what the CPU kernels run.
//
// Forward: the 8 warps of a block take 8 consecutive items of one image; a block reduction
// (common.cuh: warp shuffles, then one warp over the warp sums) writes one partial sum per group
// of 8 items and a second small kernel sums the partials of each output in a fixed order: the
// result depends on the shape only, bit-identical run after run.
// Backward (gather form, no atomics): each pixel's gradient (and the target's) is written once.
//
// The band height R and all groupings depend on the shape only (gdl_launch.cuh). Offsets inside
// an image use 32-bit arithmetic when they fit, 64-bit otherwise; image offsets are always 64-bit.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "common.cuh"
#include "gdl.h"
#include "gdl_host.h"

namespace pyframepred {
namespace cuda {
namespace gdl {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kV = 4;                   // columns per lane
constexpr int kStrip = 32 * kV;         // columns per warp item
constexpr int kFinishThreads = 256;
// Resident blocks per SM the register allocation must allow (__launch_bounds__' second
// argument): 4 x 256 threads (at most 64 registers; half occupancy) where ptxas fits the kernel
// in 64 registers without spilling; else 3 (80 registers: on sm_90, the backward that also
// writes the target's gradient, for float32 or 64-bit indices; on both, the interleaved one that
// writes it: 77-78 registers on sm_90, 116-128 bytes spilled at 64 on sm_80), else 2 (128:
// float64, whose backward took 180 registers, 1/8 occupancy, unbounded; the backward with a
// general power, around its call into pow). The interleaved variant is not compiled for float64
// (its backward with the target's gradient spilled 72-92 bytes even at 128 registers).
template <typename scalar_t>
constexpr int min_blocks_forward() {
  return sizeof(scalar_t) == 8 ? 2 : 4;
}

template <typename scalar_t, typename index_t, GdlPower kP, bool kTarget, int kD>
constexpr int min_blocks_backward() {
  if (sizeof(scalar_t) == 8 || kP == GdlPower::kGeneral) return 2;
  if (kD > 1 && kTarget) return 3;
  return PF_CUDA_ARCH >= 900 && kTarget && (sizeof(scalar_t) == 4 || sizeof(index_t) == 8) ? 3 : 4;
}
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond

// How a kernel accesses its rows, its template argument kD: 0, element by element through the
// strides; d = 1 .. kV, a Pack per lane, horizontal pairs d columns apart (1: ordinary rows; more:
// interleaved channels_last planes of d channels). The distance is a compile-time constant, so
// that the neighbours are fixed registers: a run-time d costs selects and live values that made
// the backward spill (docs/cuda-kernels.md). Compiled for kInterleavedD channels, RGB frames;
// planes of other channel counts are copied to contiguous rows.
constexpr int kInterleavedD = 3;

// Whether the interleaved variant exists for elements of this size (not float64: see above).
constexpr bool has_interleaved(size_t elem_size) { return elem_size < 8; }
constexpr unsigned kFull = kFullMask;

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

// kV consecutive elements, aligned for one vector access.
template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kV) Pack {
  scalar_t v[kV];
};

// Work decomposition (host-computed, shape-dependent only).
struct Plan {
  int64_t strips, bands, rows;     // per image: strips of kStrip columns, bands of `rows` rows
  int64_t items_per_image;         // strips * bands warp items
  int64_t groups_per_image;        // ceil(items_per_image / kWarps) blocks' worth
  int64_t groups;                  // B * groups_per_image
};

// One Pack in one or two accesses of at most 16 bytes (kV doubles are 32 bytes).
template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* p, Site site) {
  constexpr int kPer = 16 / sizeof(scalar_t) < kV ? 16 / sizeof(scalar_t) : kV;
  Pack<scalar_t> out;
#pragma unroll
  for (int h = 0; h < kV / kPer; ++h) {
    const Vec<scalar_t, kPer> v = load_vec<scalar_t, kPer>(p + h * kPer, site.part(h));
#pragma unroll
    for (int k = 0; k < kPer; ++k) out.v[h * kPer + k] = v.v[k];
  }
  return out;
}

template <typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t>& x, Site site) {
  constexpr int kPer = 16 / sizeof(scalar_t) < kV ? 16 / sizeof(scalar_t) : kV;
#pragma unroll
  for (int h = 0; h < kV / kPer; ++h) {
    Vec<scalar_t, kPer> v;
#pragma unroll
    for (int k = 0; k < kPer; ++k) v.v[k] = x.v[h * kPer + k];
    store_vec<scalar_t, kPer>(p + h * kPer, v, site.part(h));
  }
}

// Loads the kV elements of row `row` (a pointer to its column 0) at columns x0 .. x0+kV-1
// (0 past W), converted to the accumulation type. The packed and the element-wise accesses are
// different instructions (parts 0 and 1 + k of `site`).
template <bool kPack, typename scalar_t, typename index_t, typename A>
__device__ __forceinline__ void load_row(const scalar_t* row, index_t x0, index_t W, index_t sW,
                                         A (&out)[kV], Site site = {}) {
  if (kPack && x0 + kV <= W) {
    const Pack<scalar_t> pk = load_pack(row + x0, site.part(0));
#pragma unroll
    for (int k = 0; k < kV; ++k) out[k] = static_cast<A>(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      const index_t x = x0 + k;
      out[k] = x < W ? static_cast<A>(load_global(row + x * sW, site.part(1 + k))) : A(0);
    }
  }
}

template <bool kPack, typename scalar_t, typename index_t, typename A>
__device__ __forceinline__ void store_row(scalar_t* row, index_t x0, index_t W, index_t sW,
                                          const A (&in)[kV], Site site = {}) {
  if (kPack && x0 + kV <= W) {
    Pack<scalar_t> pk;
#pragma unroll
    for (int k = 0; k < kV; ++k) pk.v[k] = static_cast<scalar_t>(in[k]);
    store_pack(row + x0, pk, site.part(0));
  } else {
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      const index_t x = x0 + k;
      if (x < W) store_global(row + x * sW, static_cast<scalar_t>(in[k]), site.part(1 + k));
    }
  }
}

// The warp item of (group g, warp w): image b and the item's first row/column; false when the
// group has fewer than kWarps items.
struct Item {
  int64_t b;
  int64_t y0, y1, strip;
};

__device__ __forceinline__ bool item_of(const Plan& q, int64_t H, int64_t g, int w, Item& it) {
  it.b = g / q.groups_per_image;
  const int64_t local = (g - it.b * q.groups_per_image) * kWarps + w;
  if (local >= q.items_per_image) return false;
  const int64_t band = local / q.strips;
  it.strip = local - band * q.strips;
  it.y0 = band * q.rows;
  it.y1 = it.y0 + q.rows < H ? it.y0 + q.rows : H;
  return true;
}

// l[k]: the value kD columns left of the lane's column x0 + k, in the row at offset `yo` from
// `base` whose columns x0 .. x0 + kV - 1 the lane holds in `c`: the lane's own register k - kD,
// or (k < kD) the previous lane's register k - kD + kV by a shuffle, which lane 0 takes from the
// strip before (one element for kD <= 1, else the Pack before its columns). Columns x < kD have
// no left neighbour; their l[k] is not used.
template <int kD, typename scalar_t, typename index_t, typename A>
__device__ __forceinline__ void left_of(const A (&c)[kV], const scalar_t* base, index_t yo,
                                        index_t x0, index_t W, index_t sW, int lane, A (&l)[kV],
                                        Site site = {}) {
  if constexpr (kD <= 1) {
    l[0] = __shfl_up_sync(kFull, c[kV - 1], 1);
    if (lane == 0 && x0 > 0 && x0 - 1 < W) {
      l[0] = static_cast<A>(load_global(base + (yo + (x0 - 1) * sW), site.part(0)));
    }
#pragma unroll
    for (int k = 1; k < kV; ++k) l[k] = c[k - 1];
  } else {
    A before[kV];
#pragma unroll
    for (int k = 0; k < kV; ++k) before[k] = A(0);
    if (lane == 0 && x0 >= kV) load_row<true>(base + yo, x0 - kV, W, sW, before, site.part(0));
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      if (k >= kD) {
        l[k] = c[k - kD];
      } else {
        const A prev = __shfl_up_sync(kFull, c[k - kD + kV], 1);
        l[k] = lane == 0 ? before[k - kD + kV] : prev;
      }
    }
  }
}

// The gradient coefficients of the horizontal pairs (x, x + kD) of the lane's columns
// x = x0 + k: the `left` coefficients of column x + kD, the lane's own or (k + kD >= kV) the next
// lane's by a shuffle; lane 31 computes those of the strip after from memory (one element for
// kD <= 1, else the Packs after its columns). Zero where x + kD >= W.
template <int kD, GdlPower kP, bool kTarget, typename scalar_t, typename index_t, typename A>
__device__ __forceinline__ void right_of(const A (&left_p)[kV], const A (&left_t)[kV],
                                         const A (&pc)[kV], const A (&tc)[kV],
                                         const scalar_t* P, index_t pyo, index_t psW,
                                         const scalar_t* T, index_t tyo, index_t tsW, index_t x0,
                                         index_t W, int lane, A alpha, A (&right_p)[kV],
                                         A (&right_t)[kV], Site site = {}) {
  if constexpr (kD <= 1) {
    A last_p = __shfl_down_sync(kFull, left_p[0], 1);
    A last_t = __shfl_down_sync(kFull, left_t[0], 1);
    if (lane == 31) {
      last_p = last_t = A(0);
      const index_t xr = x0 + kV;
      if (xr < W) {
        const A pr = static_cast<A>(load_global(P + (pyo + xr * psW), site.part(0)));
        const A tr = static_cast<A>(load_global(T + (tyo + xr * tsW), site.part(1)));
        gdl_coef<kP, kTarget>(tr - tc[kV - 1], pr - pc[kV - 1], alpha, last_p, last_t);
      }
    }
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      right_p[k] = k + 1 < kV ? left_p[k + 1] : last_p;
      right_t[k] = k + 1 < kV ? left_t[k + 1] : last_t;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      if (k + kD < kV) {
        right_p[k] = left_p[k + kD];
        right_t[k] = left_t[k + kD];
      } else {
        right_p[k] = __shfl_down_sync(kFull, left_p[k + kD - kV], 1);
        right_t[k] = kTarget ? __shfl_down_sync(kFull, left_t[k + kD - kV], 1) : A(0);
      }
    }
    if (lane == 31) {  // the pairs whose right column lies in the next strip
      A after_p[kV], after_t[kV];
      load_row<true>(P + pyo, x0 + kV, W, psW, after_p, site.part(0));
      load_row<true>(T + tyo, x0 + kV, W, tsW, after_t, site.part(1));
#pragma unroll
      for (int k = kV - kD; k < kV; ++k) {
        right_p[k] = right_t[k] = A(0);
        if (x0 + k + kD < W) {
          gdl_coef<kP, kTarget>(after_t[k + kD - kV] - tc[k], after_p[k + kD - kV] - pc[k], alpha,
                                right_p[k], right_t[k]);
        }
      }
    }
  }
}

template <typename scalar_t, typename index_t, GdlPower kP, int kD>
__global__ void __launch_bounds__(kThreads, min_blocks_forward<scalar_t>())
    gdl_forward_kernel(const GdlOperand<const scalar_t> p, const GdlOperand<const scalar_t> t,
                       const Plan q, const int64_t H64, const int64_t W64,
                       const acc_t<scalar_t> alpha, acc_t<scalar_t>* __restrict__ partial) {
  using A = acc_t<scalar_t>;
  __shared__ A tmp[kThreads / 32];
  constexpr bool kPack = kD > 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const index_t H = static_cast<index_t>(H64), W = static_cast<index_t>(W64);
  const index_t psH = static_cast<index_t>(p.sH), psW = static_cast<index_t>(p.sW);
  const index_t tsH = static_cast<index_t>(t.sH), tsW = static_cast<index_t>(t.sW);
  constexpr int d = kD > 1 ? kD : 1;  // distance of horizontal pairs
  for (int64_t g = blockIdx.x; g < q.groups; g += gridDim.x) {
    A acc = A(0);
    Item it;
    if (item_of(q, H64, g, warp, it)) {  // warp-uniform
      const scalar_t* P = p.data + p.batch.offset(it.b);
      const scalar_t* T = t.data + t.batch.offset(it.b);
      const index_t x0 = static_cast<index_t>(it.strip) * kStrip + lane * kV;
      const index_t y0 = static_cast<index_t>(it.y0), y1 = static_cast<index_t>(it.y1);
      A pu[kV], tu[kV], pc[kV], tc[kV], pn[kV], tn[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) pu[k] = tu[k] = pn[k] = tn[k] = A(0);
      if (y0 > 0) {
        load_row<kPack>(P + (y0 - 1) * psH, x0, W, psW, pu);
        load_row<kPack>(T + (y0 - 1) * tsH, x0, W, tsW, tu);
      }
      load_row<kPack>(P + y0 * psH, x0, W, psW, pc);
      load_row<kPack>(T + y0 * tsH, x0, W, tsW, tc);
      for (index_t y = y0; y < y1; ++y) {
        if (y + 1 < y1) {  // next row in flight while this one is processed
          load_row<kPack>(P + (y + 1) * psH, x0, W, psW, pn);
          load_row<kPack>(T + (y + 1) * tsH, x0, W, tsW, tn);
        }
        A pl[kV], tl[kV];  // left neighbours
        left_of<kD>(pc, P, y * psH, x0, W, psW, lane, pl);
        left_of<kD>(tc, T, y * tsH, x0, W, tsW, lane, tl);
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          const index_t x = x0 + k;
          if (x < W) {
            if (x >= d) acc += gdl_term<kP>(tc[k] - tl[k], pc[k] - pl[k], alpha);
            if (y > 0) acc += gdl_term<kP>(tc[k] - tu[k], pc[k] - pu[k], alpha);
          }
        }
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          pu[k] = pc[k];
          tu[k] = tc[k];
          pc[k] = pn[k];
          tc[k] = tn[k];
        }
      }
    }
    const A total = block_sum<kThreads>(acc, tmp);
    if (threadIdx.x == 0) store_global(partial + g, total);
    __syncthreads();  // tmp is reused by the next group
  }
}

// out[o] = (sum of partial[o * per_out .. (o + 1) * per_out)) / divisor, in a fixed order.
template <typename scalar_t>
__global__ void __launch_bounds__(kFinishThreads)
    gdl_finish_kernel(const acc_t<scalar_t>* __restrict__ partial, const int64_t per_out,
                      const int64_t nout, const acc_t<scalar_t> divisor,
                      scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  __shared__ A tmp[kFinishThreads / 32];
  for (int64_t o = blockIdx.x; o < nout; o += gridDim.x) {
    const A* src = partial + o * per_out;
    A acc = A(0);
    for (int64_t i = threadIdx.x; i < per_out; i += kFinishThreads) acc += load_global(src + i);
    const A total = block_sum<kFinishThreads>(acc, tmp);
    if (threadIdx.x == 0) store_global(out + o, static_cast<scalar_t>(total / divisor));
    __syncthreads();
  }
}

template <typename scalar_t, typename index_t, GdlPower kP, bool kTarget, int kD>
__global__ void __launch_bounds__(kThreads, (min_blocks_backward<scalar_t, index_t, kP, kTarget, kD>()))
    gdl_backward_kernel(const GdlOperand<const scalar_t> p, const GdlOperand<const scalar_t> t,
                        const GdlOperand<scalar_t> gp, const GdlOperand<scalar_t> gt,
                        const Plan q, const int64_t H64, const int64_t W64,
                        const acc_t<scalar_t> alpha, const acc_t<scalar_t>* __restrict__ scale,
                        const bool per_image, const acc_t<scalar_t> divisor) {
  using A = acc_t<scalar_t>;
  constexpr bool kPack = kD > 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const index_t H = static_cast<index_t>(H64), W = static_cast<index_t>(W64);
  const index_t psH = static_cast<index_t>(p.sH), psW = static_cast<index_t>(p.sW);
  const index_t tsH = static_cast<index_t>(t.sH), tsW = static_cast<index_t>(t.sW);
  const index_t gpH = static_cast<index_t>(gp.sH), gpW = static_cast<index_t>(gp.sW);
  const index_t gtH = static_cast<index_t>(gt.sH), gtW = static_cast<index_t>(gt.sW);
  constexpr int d = kD > 1 ? kD : 1;  // distance of horizontal pairs
  for (int64_t g = blockIdx.x; g < q.groups; g += gridDim.x) {
    Item it;
    if (!item_of(q, H64, g, warp, it)) continue;  // warp-uniform
    const scalar_t* P = p.data + p.batch.offset(it.b);
    const scalar_t* T = t.data + t.batch.offset(it.b);
    scalar_t* GP = gp.data + gp.batch.offset(it.b);
    scalar_t* GT = kTarget ? gt.data + gt.batch.offset(it.b) : nullptr;
    const A s = load_global(scale + (per_image ? it.b : 0)) / divisor;
    const index_t x0 = static_cast<index_t>(it.strip) * kStrip + lane * kV;
    const index_t y0 = static_cast<index_t>(it.y0), y1 = static_cast<index_t>(it.y1);
    A pc[kV], tc[kV], pn[kV], tn[kV];
    A up_p[kV], up_t[kV];  // coefficients of the vertical pairs above the current row
    load_row<kPack>(P + y0 * psH, x0, W, psW, pc);
    load_row<kPack>(T + y0 * tsH, x0, W, tsW, tc);
#pragma unroll
    for (int k = 0; k < kV; ++k) up_p[k] = up_t[k] = pn[k] = tn[k] = A(0);
    if (y0 > 0) {
      load_row<kPack>(P + (y0 - 1) * psH, x0, W, psW, pn);
      load_row<kPack>(T + (y0 - 1) * tsH, x0, W, tsW, tn);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        if (x0 + k < W) gdl_coef<kP, kTarget>(tc[k] - tn[k], pc[k] - pn[k], alpha, up_p[k], up_t[k]);
      }
    }
    for (index_t y = y0; y < y1; ++y) {
      const bool down = y + 1 < H;  // warp-uniform
      if (down) {
        load_row<kPack>(P + (y + 1) * psH, x0, W, psW, pn);
        load_row<kPack>(T + (y + 1) * tsH, x0, W, tsW, tn);
      }
      // Horizontal pairs (x - d, x) of the lane's columns: `left`; the pairs (x, x + d): `right`.
      A pl[kV], tl[kV];
      left_of<kD>(pc, P, y * psH, x0, W, psW, lane, pl);
      left_of<kD>(tc, T, y * tsH, x0, W, tsW, lane, tl);
      A left_p[kV], left_t[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        left_p[k] = left_t[k] = A(0);
        const index_t x = x0 + k;
        if (x < W && x >= d) gdl_coef<kP, kTarget>(tc[k] - tl[k], pc[k] - pl[k], alpha, left_p[k], left_t[k]);
      }
      A right_p[kV], right_t[kV];
      right_of<kD, kP, kTarget>(left_p, left_t, pc, tc, P, y * psH, psW, T, y * tsH, tsW, x0, W,
                                lane, alpha, right_p, right_t);
      A down_p[kV], down_t[kV], out_p[kV], out_t[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        down_p[k] = down_t[k] = A(0);
        if (down && x0 + k < W) {
          gdl_coef<kP, kTarget>(tn[k] - tc[k], pn[k] - pc[k], alpha, down_p[k], down_t[k]);
        }
        out_p[k] = gdl_gather(up_p[k], down_p[k], left_p[k], right_p[k], s);
        if constexpr (kTarget) out_t[k] = gdl_gather(up_t[k], down_t[k], left_t[k], right_t[k], s);
      }
      store_row<kPack>(GP + y * gpH, x0, W, gpW, out_p);
      if constexpr (kTarget) store_row<kPack>(GT + y * gtH, x0, W, gtW, out_t);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        up_p[k] = down_p[k];
        up_t[k] = down_t[k];
        pc[k] = pn[k];
        tc[k] = tn[k];
      }
    }
  }
}

}  // namespace gdl
}  // namespace cuda
}  // namespace pyframepred
