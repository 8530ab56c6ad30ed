// CPU kernel of conv2d_weight_grad: the weight gradient of a stride-1 'same' convolution,
//   dW[co, ci, i, j] = sum over (b, y, x) of g[b, co, y, x] * x_pad[b, ci, y + i, x + j],
// as an implicit GEMM whose reduction runs over all B*H*W positions -- the shape of the ConvLSTM
// layer's batched weight gradients (B = many steps' batches, K = 9*C_in columns, C_out = 4C).
//
// Why our own: at ConvLSTM sizes ATen's (oneDNN's) weight gradient runs at less than half the
// speed of the same convolution's forward (e.g. 50-60 against 100-125 GFLOP/s on 2 AVX2 cores),
// and the layer's backward spends most of its time there.
//
// Layout: positions p = (b, y, x) are rows, channels the fastest dimension (NHWC, what
// channels_last tensors are in memory). Column (i, j, ci) of the implicit im2col matrix is the
// input shifted by a constant offset, so no im2col matrix is built and the input is read in place;
// a tile's columns belong to one tap (i, j), whose zero padding is skipped rather than stored. A
// register tile holds kNV vectors of output channels times kMR columns (12 accumulators on AVX2's
// 16 registers, 24 on AVX-512's 32); per position it loads kNV vectors of g and broadcasts kMR
// input values. Tiles walk a few rows of positions at a time, so that the slice of g they reread
// stays in L1. Threads take equal shares of the rows, each with its own accumulator
// (columns x C_out), summed in a fixed order at the end: results are deterministic for a given
// thread count.
//
// Cases the tile does not cover (not float32, C_out not a multiple of the vector width) go to
// ATen's implementation (conv2d_weight_grad_aten).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "conv_weight_grad.h"
#include "cpu/kernels.h"

PYFRAMEPRED_DECLARE_CPU_KERNELS(CPU_CAPABILITY)

// Compiled once per ISA level: everything here is in pyframepred::cpu::<level> (cpu/kernels.h).
namespace pyframepred {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVL = Vec::size();
// Vectors of output channels per tile: kNV * kMR accumulators, plus kNV vectors of g and one
// broadcast, must fit the register file: 2 x 6 of AVX2's 16 registers, 4 x 6 of AVX-512's 32 (with
// 2 x 6 there, AVX-512 ran at 250-310 GFLOP/s on 2 Xeon cores, 4 x 6: 300-317, about oneDNN's
// 280-376 on this machine's noisy runs).
constexpr int kNV = kVL >= 16 ? 4 : 2;
constexpr int kMR = 6;  // columns (i, j, ci) per tile
// Positions a tile walks before the next tile: its slice of g (kNV vectors per position: 8 KiB on
// AVX2, 32 KiB on AVX-512) stays in L1.
constexpr int64_t kTilePositions = 128;

// The geometry shared by all tiles of one call.
struct Geometry {
  int64_t H, W, Ci, Co;
};

// Accumulates rows [r0, r1) of positions (a row = one (b, y), W positions) into
// acc[m * Co + v * kVL ...] for kMR_ columns of one kernel tap (di, dj) -- input channels
// ci0 .. ci0 + kMR_ - 1 -- and kNV_ vectors of output channels starting at g0 (already offset to
// the tile's first channel). Positions whose tap falls outside the frame (the zero padding)
// contribute nothing and are skipped: rows wholly, columns by narrowing the x range.
template <int kNV_, int kMR_>
void tile(const Geometry& s, const float* g0, const float* x0, int64_t di, int64_t dj,
          int64_t ci0, int64_t r0, int64_t r1, float* acc) {
  Vec a[kMR_][kNV_];
  for (int m = 0; m < kMR_; ++m) {
    for (int v = 0; v < kNV_; ++v) a[m][v] = Vec::loadu(acc + m * s.Co + v * kVL);
  }
  const int64_t x_lo = std::max<int64_t>(0, -dj), x_hi = std::min<int64_t>(s.W, s.W - dj);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t y = r % s.H;
    if (y + di < 0 || y + di >= s.H || x_lo >= x_hi) continue;
    const float* g = g0 + (r * s.W + x_lo) * s.Co;
    // The input pixel (y + di, x + dj) of position (y, x), channel ci0 + m.
    const float* x = x0 + ((r + di) * s.W + x_lo + dj) * s.Ci + ci0;
    for (int64_t p = 0; p < x_hi - x_lo; ++p) {
      Vec gv[kNV_];
      for (int v = 0; v < kNV_; ++v) gv[v] = Vec::loadu(g + p * s.Co + v * kVL);
      const float* xp = x + p * s.Ci;
      for (int m = 0; m < kMR_; ++m) {
        const Vec xv(xp[m]);
        for (int v = 0; v < kNV_; ++v) a[m][v] = at::vec::fmadd(gv[v], xv, a[m][v]);
      }
    }
  }
  for (int m = 0; m < kMR_; ++m) {
    for (int v = 0; v < kNV_; ++v) a[m][v].store(acc + m * s.Co + v * kVL);
  }
}

// tile<> with the column count of a tap's last, partial group as a run-time value.
template <int kNV_>
void tile_columns(int columns, const Geometry& s, const float* g0, const float* x0, int64_t di,
                  int64_t dj, int64_t ci0, int64_t r0, int64_t r1, float* acc) {
  static_assert(kMR == 6, "tile_columns lists the column counts 1..kMR");
  switch (columns) {
    case 6: return tile<kNV_, 6>(s, g0, x0, di, dj, ci0, r0, r1, acc);
    case 5: return tile<kNV_, 5>(s, g0, x0, di, dj, ci0, r0, r1, acc);
    case 4: return tile<kNV_, 4>(s, g0, x0, di, dj, ci0, r0, r1, acc);
    case 3: return tile<kNV_, 3>(s, g0, x0, di, dj, ci0, r0, r1, acc);
    case 2: return tile<kNV_, 2>(s, g0, x0, di, dj, ci0, r0, r1, acc);
    default: return tile<kNV_, 1>(s, g0, x0, di, dj, ci0, r0, r1, acc);
  }
}

at::Tensor conv2d_weight_grad_cpu(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  check_conv2d_weight_grad_args(grad_out, input, kh, kw);
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = grad_out.size(1);
  if (input.scalar_type() != at::kFloat || Co % kVL != 0 || B * H * W == 0 || Ci == 0) {
    return conv2d_weight_grad_aten(grad_out, input, kh, kw);
  }
  const Geometry s{H, W, Ci, Co};
  // Both as NHWC rows: views when they are channels_last, as the layer's tensors are.
  const at::Tensor g = grad_out.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor x = input.permute({0, 2, 3, 1}).contiguous();
  const int64_t columns = kh * kw * Ci;  // (i, j, ci): the order of channels_last weights' memory
  const int64_t rows = B * H;
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  at::Tensor acc = at::zeros({shares, columns, Co}, input.options());
  const float* gd = g.const_data_ptr<float>();
  const float* xd = x.const_data_ptr<float>();
  float* accd = acc.data_ptr<float>();
  const int64_t rows_per_tile = std::max<int64_t>(1, kTilePositions / W);  // W >= 1 (above)
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    for (int64_t share = first; share < last; ++share) {
      const int64_t r_begin = rows * share / shares, r_end = rows * (share + 1) / shares;
      float* mine = accd + share * columns * Co;
      for (int64_t r0 = r_begin; r0 < r_end; r0 += rows_per_tile) {
        const int64_t r1 = std::min(r_end, r0 + rows_per_tile);
        // Output channels in groups of kNV vectors; a last group of fewer (Co is a multiple of
        // the vector width, not always of kNV of them) in tiles of 2 and 1 vectors.
        for (int64_t co = 0; co < Co;) {
          const int64_t left = (Co - co) / kVL;
          const int nv = left >= kNV ? kNV : (left >= 2 ? 2 : 1);
          for (int64_t i = 0; i < kh; ++i) {
            for (int64_t j = 0; j < kw; ++j) {
              for (int64_t ci = 0; ci < Ci; ci += kMR) {
                const int n = static_cast<int>(std::min<int64_t>(kMR, Ci - ci));
                float* a = mine + ((i * kw + j) * Ci + ci) * Co + co;
                const int64_t di = i - kh / 2, dj = j - kw / 2;
                if (nv == kNV) {
                  tile_columns<kNV>(n, s, gd + co, xd, di, dj, ci, r0, r1, a);
                } else if (nv == 2) {
                  tile_columns<2>(n, s, gd + co, xd, di, dj, ci, r0, r1, a);
                } else {
                  tile_columns<1>(n, s, gd + co, xd, di, dj, ci, r0, r1, a);
                }
              }
            }
          }
          co += nv * kVL;
        }
      }
    }
  });
  // (columns, Co) -> (Co, kh, kw, Ci) memory: the weight's channels_last layout; in the input's
  // memory format, as ATen's (conv2d_weight_grad_aten).
  const at::Tensor total = shares == 1 ? acc[0] : acc.sum(0);
  return total.t().contiguous().view({Co, kh, kw, Ci}).permute({0, 3, 1, 2})
      .contiguous(input.suggest_memory_format());
}

}  // namespace

// This level's kernel, registered by cpu/dispatch.cpp.
const ConvKernels conv_kernels{&conv2d_weight_grad_cpu};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pyframepred
