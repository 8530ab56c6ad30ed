// CPU kernels of the ConvLSTM layer's convolutions: conv2d_same (below, after the direct weight
// gradients: 3x3 convolutions in the Winograd domain, float32 as F(4x4, 3x3) and, at the
// avx512_bf16 level, bfloat16 as F(2x2, 3x3)), the Winograd weight gradients of 3x3 kernels (namespace wgrad, after it), and the
// direct conv2d_weight_grad of any kernel size (first), the weight gradient of a stride-1 'same'
// convolution,
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
// bfloat16 has kernels of its own at the AMX level (below: tile products on Intel's AMX unit, C_in
// and C_out multiples of 16) and at the levels with AVX512-BF16 (VDPBF16PS over pairs of
// positions, C_out a multiple of 16; at the AMX level for the channel counts tiles do not take).
// Cases none covers (other dtypes, C_out not a multiple of the vector width, bfloat16 below the
// avx512_bf16 level) go to ATen's implementation (conv2d_weight_grad_aten).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

// The AMX level's objects (csrc/cpu/isa_levels.txt) compile the bfloat16 tile kernel below, the
// levels with AVX512-BF16 (avx512_bf16, amx) the bfloat16 dot-product kernel.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__)
#define PYFRAMEPRED_AMX_KERNEL 1
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define PYFRAMEPRED_DOT_BF16_KERNEL 1
#endif
#if defined(PYFRAMEPRED_AMX_KERNEL) || defined(PYFRAMEPRED_DOT_BF16_KERNEL)
#include <immintrin.h>
#endif

#include "conv_weight_grad.h"
#include "cpu/kernels.h"
#include "cpu/vec_utils.h"

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

#if defined(PYFRAMEPRED_AMX_KERNEL) || defined(PYFRAMEPRED_DOT_BF16_KERNEL)
// ---- bfloat16 in pairs of positions: what the AMX and the AVX512-BF16 kernels share ------------
//
// Both multiply-add bfloat16 in pairs along the reduction (TDPBF16PS and VDPBF16PS: each float32
// lane adds a[2k] * b[2k] + a[2k + 1] * b[2k + 1]), so g is stored as pairs of neighbouring
// positions interleaved per output channel, and both sum the threads' float32 accumulators the
// same way.
namespace bf16_pairs {

using bf16 = uint16_t;
constexpr int64_t kChunk = 32;        // positions per tile product (K) / per packed chunk of g
constexpr int64_t kTileElems = 512;   // bf16 elements of a 16 x 64-byte tile

// vpermt2w indices interleaving two vectors of 32 channels of neighbouring positions (p0, p1;
// indices into p0 are 0..31, into p1 32..63) into pairs: element e of the result takes position
// e % 2 and channel e / 2 -- channels 0..15 (kLo) or 16..31 (kHi).
alignas(64) constexpr int16_t kLo[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,  37,
                                         6,  38, 7,  39, 8,  40, 9,  41, 10, 42, 11, 43,
                                         12, 44, 13, 45, 14, 46, 15, 47};
alignas(64) constexpr int16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53,
                                         22, 54, 23, 55, 24, 56, 25, 57, 26, 58, 27, 59,
                                         28, 60, 29, 61, 30, 62, 31, 63};

// Packs R rows of g (NHWC, Co channels, from the block's first row) into B tiles:
//   out[((r * chunks + c) * nN + n) * 512 + k2 * 32 + 2 * q + e]
//     = g[row r, x = 32c + 2 * k2 + e, channel 16n + q]   (0 where x >= W).
void pack_g(const bf16* g, int64_t W, int64_t Co, int64_t chunks, int64_t R, bf16* out) {
  const __m512i lo_idx = _mm512_load_si512(kLo), hi_idx = _mm512_load_si512(kHi);
  const int64_t nN = Co / 16;
  const __mmask32 half = 0xffffu;  // the first 16 channels: a last group of 16 when Co % 32 == 16
  for (int64_t r = 0; r < R; ++r) {
    const bf16* row = g + r * W * Co;
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t k2 = 0; k2 < 16; ++k2) {
        const int64_t x = c * kChunk + 2 * k2;
        const bf16* p0 = row + x * Co;
        const bool has0 = x < W, has1 = x + 1 < W;
        bf16* o = out + ((r * chunks + c) * nN) * kTileElems + k2 * 32;
        int64_t n = 0;
        for (; n + 2 <= nN; n += 2) {
          const __m512i v0 = has0 ? _mm512_loadu_si512(p0 + n * 16) : _mm512_setzero_si512();
          const __m512i v1 = has1 ? _mm512_loadu_si512(p0 + Co + n * 16) : _mm512_setzero_si512();
          _mm512_store_si512(o + n * kTileElems, _mm512_permutex2var_epi16(v0, lo_idx, v1));
          _mm512_store_si512(o + (n + 1) * kTileElems, _mm512_permutex2var_epi16(v0, hi_idx, v1));
        }
        if (n < nN) {
          const __m512i v0 =
              has0 ? _mm512_maskz_loadu_epi16(half, p0 + n * 16) : _mm512_setzero_si512();
          const __m512i v1 =
              has1 ? _mm512_maskz_loadu_epi16(half, p0 + Co + n * 16) : _mm512_setzero_si512();
          _mm512_store_si512(o + n * kTileElems, _mm512_permutex2var_epi16(v0, lo_idx, v1));
        }
      }
    }
  }
}

// (columns, Co) float32 accumulators, one per share -> their sum, shares added in a fixed order
// and rounded once to bfloat16, vectors of output channels at a time (it had read across Co, one
// element per cache line: 0.16 ms a call at (4, 64 -> 256, 64x64) on 2 Xeon cores); then
// transposed to (Co, Ci, kh, kw) in the input's memory format.
at::Tensor finish(const float* accd, int64_t shares, int64_t Co, int64_t kh, int64_t kw,
                  int64_t Ci, const at::Tensor& input) {
  const int64_t columns = kh * kw * Ci;
  at::Tensor out = at::empty({columns, Co}, input.options());
  bf16* od = reinterpret_cast<bf16*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, columns, 16, [&](int64_t first, int64_t last) {
    for (int64_t col = first; col < last; ++col) {
      for (int64_t co = 0; co < Co; co += 16) {
        const __mmask16 m = Co - co >= 16 ? __mmask16(0xffff) : __mmask16((1u << (Co - co)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, accd + col * Co + co);
        for (int64_t sh = 1; sh < shares; ++sh) {
          v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, accd + (sh * columns + col) * Co + co));
        }
        const __m256i rounded = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
        _mm256_mask_storeu_epi16(od + col * Co + co, m, rounded);
      }
    }
  });
  // (kh, kw, Ci, Co) -> (Co, Ci, kh, kw)
  return out.view({kh, kw, Ci, Co}).permute({3, 2, 0, 1}).contiguous(input.suggest_memory_format());
}

}  // namespace bf16_pairs
#endif

#ifdef PYFRAMEPRED_AMX_KERNEL
// ---- The AMX level: bfloat16 weight gradients on the tile unit (TDPBF16PS) ----------------------
//
// The same reduction over positions, as tile products (C += A x B, float32 sums of bfloat16
// products). For a tap (i, j) and 16 input channels, the A tile is 16 channel rows x 32 positions
// of one image row, read in place from x_pad[j]: the input transposed to zero-padded NCHW planes
// and shifted by the tap's column, one copy per column j so that every A tile starts on a 64-byte
// boundary (unaligned tile rows, which straddle two cache lines, made the products ~30% slower).
// The B tile is 32 positions x 16 output channels of g, stored as pairs of positions interleaved
// per channel (the layout TDPBF16PS reads), packed from g's NHWC rows once per block of positions
// and used by every tap and channel group. C tiles (16 input x 16 output channels) accumulate in
// a 2 x 2 arrangement (tiles 0-3; A in 4-5, B in 6-7) in the same per-thread (columns, Co) float32
// accumulator as the float32 kernel's. Positions x >= W of a row's last 32 are zero in both
// operands. Why: on 2 Xeon cores oneDNN's bf16 weight gradient ran at 0.95-1.7 TFLOP/s at the
// layer's shapes, the tile unit peaks near 3.7 per core (operands in L1: ~2.6).
namespace amx {

using namespace bf16_pairs;
// Positions per block: 8 chunks of 32 (4 rows of 64x64 frames). A block's C tiles are loaded from
// the accumulator and stored back once per block, whatever its depth, and on the tile unit that
// round trip costs about what the products do: a loop of 2 x 2 tile products with its C tiles
// loaded and stored every 4 chunks ran at 1.6 TFLOP/s on a Xeon core, every 8 at 2.2, never at 3.3
// (the accumulator, 1.2 MiB, read from L2). Deeper blocks pack more g (128 KiB at Co = 256), which
// then comes from L2 rather than L1. Measured round-robin in one process on a 2-core Xeon
// (2026-12-07), against 128 positions: 1.18-1.25x at (4, 64 -> 256, 64x64) and (4, 128 -> 256),
// 1.09-1.16x at (8, 16 -> 128, 32x32), (24, 32 -> 128) and (8, 48 -> 128); 384 and 512 were within
// a few percent of 256 either way. (Splitting each thread's share by input channels instead of
// rows, to halve the accumulator it cycles through, measured 0.8-1.05x: each share then packs all
// of g.)
constexpr int64_t kBlockPositions = 256;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
}

// C[m][n] += A[m] x B[n] over the block's R rows and `chunks` chunks per row, for kM_ channel
// groups (A pointers a[m] at the block's first row, row stride a_stride bytes between channels,
// lp elements between image rows) and kN_ output-channel groups starting at group n0.
template <int kM_, int kN_>
void tile_block(float* const c[2], int64_t c_stride, const bf16* const a[2], int64_t a_stride,
                int64_t lp, const bf16* bpack, int64_t n0, int64_t nN, int64_t R, int64_t chunks) {
  _tile_loadd(0, c[0], c_stride);
  if constexpr (kN_ == 2) _tile_loadd(1, c[0] + 16, c_stride);
  if constexpr (kM_ == 2) {
    _tile_loadd(2, c[1], c_stride);
    if constexpr (kN_ == 2) _tile_loadd(3, c[1] + 16, c_stride);
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t off = r * lp + ch * kChunk;
      const bf16* b = bpack + ((r * chunks + ch) * nN + n0) * kTileElems;
      _tile_loadd(4, a[0] + off, a_stride);
      _tile_loadd(6, b, 64);
      if constexpr (kN_ == 2) _tile_loadd(7, b + kTileElems, 64);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (kN_ == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (kM_ == 2) {
        _tile_loadd(5, a[1] + off, a_stride);
        _tile_dpbf16ps(2, 5, 6);
        if constexpr (kN_ == 2) _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  _tile_stored(0, c[0], c_stride);
  if constexpr (kN_ == 2) _tile_stored(1, c[0] + 16, c_stride);
  if constexpr (kM_ == 2) {
    _tile_stored(2, c[1], c_stride);
    if constexpr (kN_ == 2) _tile_stored(3, c[1] + 16, c_stride);
  }
}

template <int kM_>
void tile_block_n(int nb, float* const c[2], int64_t c_stride, const bf16* const a[2],
                  int64_t a_stride, int64_t lp, const bf16* bpack, int64_t n0, int64_t nN,
                  int64_t R, int64_t chunks) {
  if (nb == 2) {
    tile_block<kM_, 2>(c, c_stride, a, a_stride, lp, bpack, n0, nN, R, chunks);
  } else {
    tile_block<kM_, 1>(c, c_stride, a, a_stride, lp, bpack, n0, nN, R, chunks);
  }
}

// The input's padded planes for a slab of output rows: x_pad[j], j < kw, holds the input in NCHW
// planes of the slab's S + kh - 1 rows (output rows y0 - kh / 2 .. y0 + S - 1 + kh / 2, zero
// outside the frame) by Lp = roundup(W, 32) columns, shifted by j - kw / 2 columns: column x of
// slab row r holds input pixel (y0 + r - kh / 2, x + j - kw / 2). So the A tile of tap (i, j),
// chunk c of output row y0 + yb is x_pad[j] + (yb + i) * Lp + 32c: 64-byte aligned. Each thread
// builds the slabs of its own rows, sized to stay in its L2 cache (a whole-input x_pad, 6.2 MiB at
// (4, 64, 64x64), went through memory twice: written, then read by the tile products).
struct Slab {
  const at::BFloat16* xs;  // the input's NHWC rows: pixel (b, y, x) at b * sb + y * sy + x * sx
  int64_t sb, sy, sx;
  int64_t H, W, Ci, kh, kw, Lp;
  int64_t S_max;  // output rows of the largest slab, which x_pad is laid out for
  int64_t plane() const { return (S_max + kh - 1) * Lp; }  // a channel's rows, one copy
  int64_t copy() const { return Ci * plane(); }            // one of the kw copies
  // Fills the rows of x_pad for output rows y0 .. y0 + S - 1 of image b, S <= S_max.
  void build(bf16* xpad, int64_t b, int64_t y0, int64_t S) const {
    const int64_t plane = this->plane(), copy = this->copy();
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t r = 0; r < S + kh - 1; ++r) {
      const int64_t y = y0 + r - kh / 2;
      bf16* row = xpad + r * Lp;  // slab row r of channel 0 in x_pad[0]
      if (y < 0 || y >= H) {
        for (int64_t j = 0; j < kw; ++j) {
          for (int64_t ci = 0; ci < Ci; ++ci) {
            bf16* dst = row + j * copy + ci * plane;
            for (int64_t col = 0; col < Lp; col += kChunk) _mm512_store_si512(dst + col, zero);
          }
        }
        continue;
      }
      // The input row transposed into the unshifted copy (j = kw / 2; 32 x 32 blocks), then the
      // shifted ones from it with masked loads.
      bf16* center = row + (kw / 2) * copy;
      for (int64_t ci0 = 0; ci0 < Ci; ci0 += kChunk) {
        const int n = static_cast<int>(std::min<int64_t>(kChunk, Ci - ci0));
        for (int64_t x0 = 0; x0 < Lp; x0 += kChunk) {
          const int m = static_cast<int>(std::min<int64_t>(kChunk, W - x0));
          bf16* dst = center + ci0 * plane + x0;
          if (m < kChunk) {
            for (int k = 0; k < n; ++k) _mm512_store_si512(dst + k * plane, zero);
          }
          if (m > 0) {
            at::vec::transpose_mxn<at::BFloat16>(xs + b * sb + y * sy + x0 * sx + ci0, sx,
                                                 reinterpret_cast<at::BFloat16*>(dst), plane, m, n);
          }
        }
      }
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t shift = j - kw / 2;
        if (shift == 0) continue;
        for (int64_t ci = 0; ci < Ci; ++ci) {
          const bf16* src = center + ci * plane;
          bf16* dst = row + j * copy + ci * plane;
          for (int64_t col = 0; col < Lp; col += kChunk) {
            // Lanes whose source column col + lane + shift lies in [0, W); masked-off lanes are
            // not read (no fault before the row's start).
            const int64_t lo = std::clamp<int64_t>(-(col + shift), 0, kChunk);
            const int64_t hi = std::clamp<int64_t>(W - (col + shift), 0, kChunk);
            const uint32_t upto = hi >= kChunk ? 0xffffffffu : ((1u << hi) - 1u);
            const uint32_t from = lo >= kChunk ? 0u : ~((1u << lo) - 1u);
            const __mmask32 mask = static_cast<__mmask32>(upto & from);
            _mm512_store_si512(dst + col, _mm512_maskz_loadu_epi16(mask, src + col + shift));
          }
        }
      }
    }
  }
};

// Bytes of a thread's slab of padded input (all kw copies): its output rows are as many as fit.
constexpr int64_t kSlabBytes = 512 << 10;

// The weight gradient for bfloat16 g and input with Ci and Co multiples of 16, added into the
// float32 partial sums `acc` (shares, kh * kw * Ci_w, Co), one share per thread at most: the
// input's channels are the first Ci of the Ci_w >= Ci the sums are laid out for (the others, zero,
// add nothing).
void weight_grad_bf16_into(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh,
                           int64_t kw, const at::Tensor& acc) {
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = grad_out.size(1);
  const int64_t chunks = (W + kChunk - 1) / kChunk, Lp = chunks * kChunk;
  // The input's NHWC rows read in place where the channels are the fastest dim (channels_last,
  // or a channel slice of channels_last frames: the ConvLSTM layer's x and h parts of its merged
  // frames), a copy otherwise.
  const at::Tensor xn = input.stride(1) == 1 && input.stride(3) >= Ci
                            ? input
                            : input.permute({0, 2, 3, 1}).contiguous().permute({0, 3, 1, 2});
  const int64_t slab_rows = std::clamp<int64_t>(kSlabBytes / (kw * Ci * Lp * 2) - (kh - 1), 1, H);
  const Slab slab{xn.const_data_ptr<at::BFloat16>(), xn.stride(0), xn.stride(2), xn.stride(3),
                  H, W, Ci, kh, kw, Lp, slab_rows};
  const at::Tensor g = grad_out.permute({0, 2, 3, 1}).contiguous();
  const int64_t columns = acc.size(1), Ci_w = columns / (kh * kw);
  const int64_t groups = Ci / 16, combos = kh * kw * groups;
  const int64_t nN = Co / 16;
  const int64_t rows = B * H;
  const int64_t shares = acc.size(0);
  const bf16* gd = reinterpret_cast<const bf16*>(g.const_data_ptr<at::BFloat16>());
  float* accd = acc.data_ptr<float>();
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockPositions / (chunks * kChunk));
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    configure_tiles();
    at::Tensor bbuf_t = at::empty({rows_per_block * chunks * nN * kTileElems}, input.options());
    bf16* bbuf = reinterpret_cast<bf16*>(bbuf_t.data_ptr<at::BFloat16>());
    const int64_t copy_elems = slab.copy(), plane = slab.plane();
    at::Tensor xpad_t = at::empty({kw * copy_elems}, input.options());
    bf16* xpad = reinterpret_cast<bf16*>(xpad_t.data_ptr<at::BFloat16>());
    for (int64_t share = first; share < last; ++share) {
      const int64_t r_begin = rows * share / shares, r_end = rows * (share + 1) / shares;
      float* mine = accd + share * columns * Co;
      for (int64_t s0 = r_begin; s0 < r_end;) {
        // A slab: rows of one image, laid out with the planes of slab_rows rows whatever its S.
        const int64_t b = s0 / H, ys = s0 % H;
        const int64_t S = std::min({r_end - s0, slab_rows, H - ys});
        slab.build(xpad, b, ys, S);
        // Within it, blocks of rows whose packed g every tap and channel group reuses.
        for (int64_t yb = 0; yb < S;) {
          const int64_t R = std::min(rows_per_block, S - yb);
          pack_g(gd + (s0 + yb) * W * Co, W, Co, chunks, R, bbuf);
          for (int64_t m = 0; m < combos; m += 2) {
            const int mb = combos - m >= 2 ? 2 : 1;
            float* c[2];
            const bf16* a[2];
            for (int k = 0; k < mb; ++k) {
              const int64_t tap = (m + k) / groups, grp = (m + k) % groups;
              const int64_t i = tap / kw, j = tap % kw;
              c[k] = mine + (tap * Ci_w + grp * 16) * Co;
              a[k] = xpad + j * copy_elems + grp * 16 * plane + (yb + i) * Lp;
            }
            if (mb == 1) {
              c[1] = c[0];
              a[1] = a[0];
            }
            for (int64_t n = 0; n < nN; n += 2) {
              const int nb = nN - n >= 2 ? 2 : 1;
              float* cn[2] = {c[0] + n * 16, c[1] + n * 16};
              if (mb == 2) {
                tile_block_n<2>(nb, cn, Co * 4, a, plane * 2, Lp, bbuf, n, nN, R, chunks);
              } else {
                tile_block_n<1>(nb, cn, Co * 4, a, plane * 2, Lp, bbuf, n, nN, R, chunks);
              }
            }
          }
          yb += R;
        }
        s0 += S;
      }
    }
    _tile_release();
  });
}

}  // namespace amx
#endif  // AMX

#ifdef PYFRAMEPRED_DOT_BF16_KERNEL
// ---- AVX512-BF16: bfloat16 weight gradients by VDPBF16PS (AMD Zen 4 and later, Intel Cooper Lake)
//
// The float32 kernel's register tile (kNV vectors of 16 output channels x kMR columns of one tap),
// walking pairs of positions instead of positions: per pair it loads kNV vectors of g (16 channels
// x the pair, from the pack of pack_g) and broadcasts, per column, the pair of input values the
// two positions see as one 32-bit word; VDPBF16PS adds both products to the float32 accumulator.
// The input words come from a pack of the input made once per call: pairs of neighbouring
// columns of the zero-padded frame, per channel, for both parities of the pair's first column
// (a tap's column shift decides which), so pairs never straddle the frame's edge and the padding
// is stored rather than skipped. Rows whose tap falls outside the frame are skipped. Why: on a
// 2-core Zen 4 EPYC oneDNN's bf16 weight gradient ran at 170-200 GFLOP/s at the layer's shapes,
// against 350 for the same convolutions' forward and 404 of VDPBF16PS peak.
namespace dot {

using namespace bf16_pairs;

// xpk[((e * rows + r) * Up + u) * Ci + ci] = the pair (xpad(r, 2u + e), xpad(r, 2u + e + 1)) of
// channel ci as one word (first value in the low half), where xpad(r, col) is input pixel
// (r, col - pw) and zero outside [0, W).
void pack_x(const bf16* x, int64_t rows, int64_t W, int64_t Ci, int64_t pw, int64_t Up,
            uint32_t* xpk) {
  const __m512i lo_idx = _mm512_load_si512(kLo), hi_idx = _mm512_load_si512(kHi);
  at::parallel_for(0, rows, 1, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      for (int64_t e = 0; e < 2; ++e) {
        for (int64_t u = 0; u < Up; ++u) {
          const int64_t xa = 2 * u + e - pw, xb = xa + 1;
          uint32_t* dst = xpk + ((e * rows + r) * Up + u) * Ci;
          for (int64_t c0 = 0; c0 < Ci; c0 += 32) {
            const int64_t n = std::min<int64_t>(32, Ci - c0);
            const __mmask32 m = n == 32 ? ~__mmask32(0) : static_cast<__mmask32>((1u << n) - 1u);
            const __m512i v0 = xa >= 0 && xa < W ? _mm512_maskz_loadu_epi16(m, x + (r * W + xa) * Ci + c0)
                                                 : _mm512_setzero_si512();
            const __m512i v1 = xb >= 0 && xb < W ? _mm512_maskz_loadu_epi16(m, x + (r * W + xb) * Ci + c0)
                                                 : _mm512_setzero_si512();
            const __m512i lo = _mm512_permutex2var_epi16(v0, lo_idx, v1);
            const __m512i hi = _mm512_permutex2var_epi16(v0, hi_idx, v1);
            if (n == 32) {
              _mm512_storeu_si512(dst + c0, lo);
              _mm512_storeu_si512(dst + c0 + 16, hi);
            } else {
              const int64_t nl = std::min<int64_t>(16, n), nh = n - nl;
              _mm512_mask_storeu_epi32(dst + c0, static_cast<__mmask16>((1u << nl) - 1u), lo);
              if (nh > 0) {
                _mm512_mask_storeu_epi32(dst + c0 + 16, static_cast<__mmask16>((1u << nh) - 1u), hi);
              }
            }
          }
        }
      }
    }
  });
}

// Accumulates the R rows of a block (output rows y0 .. y0 + R - 1 of one image; g packed by
// pack_g, offset to the tile's first channel group) into acc[m * Co + 16 v ...] for kMR_ columns
// of tap (di, j) -- input channels from the word at xk of each row's pack -- and kNV_ groups of
// 16 output channels.
template <int kNV_, int kMR_>
void tile(const uint32_t* xk, int64_t x_row, const bf16* gp, int64_t chunks, int64_t nN,
          int64_t pairs, int64_t H, int64_t y0, int64_t di, int64_t R, int64_t Ci, int64_t Co,
          float* acc) {
  __m512 a[kMR_][kNV_];
  for (int m = 0; m < kMR_; ++m) {
    for (int v = 0; v < kNV_; ++v) a[m][v] = _mm512_loadu_ps(acc + m * Co + v * 16);
  }
  for (int64_t rr = 0; rr < R; ++rr) {
    const int64_t y = y0 + rr + di;
    if (y < 0 || y >= H) continue;
    const uint32_t* xr = xk + (rr + di) * x_row;
    const bf16* gr = gp + rr * chunks * nN * kTileElems;
    for (int64_t k = 0; k < pairs; ++k) {
      const bf16* gk = gr + (k >> 4) * nN * kTileElems + (k & 15) * 32;
      __m512bh gv[kNV_];
      for (int v = 0; v < kNV_; ++v) gv[v] = (__m512bh)_mm512_load_si512(gk + v * kTileElems);
      const uint32_t* xp = xr + k * Ci;
      for (int m = 0; m < kMR_; ++m) {
        const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[m]));
        for (int v = 0; v < kNV_; ++v) a[m][v] = _mm512_dpbf16_ps(a[m][v], xv, gv[v]);
      }
    }
  }
  for (int m = 0; m < kMR_; ++m) {
    for (int v = 0; v < kNV_; ++v) _mm512_storeu_ps(acc + m * Co + v * 16, a[m][v]);
  }
}

template <int kNV_>
void tile_columns(int columns, const uint32_t* xk, int64_t x_row, const bf16* gp, int64_t chunks,
                  int64_t nN, int64_t pairs, int64_t H, int64_t y0, int64_t di, int64_t R,
                  int64_t Ci, int64_t Co, float* acc) {
  static_assert(kMR == 6, "tile_columns lists the column counts 1..kMR");
#define PYFRAMEPRED_DOT_TILE(n) \
  tile<kNV_, n>(xk, x_row, gp, chunks, nN, pairs, H, y0, di, R, Ci, Co, acc)
  switch (columns) {
    case 6: return PYFRAMEPRED_DOT_TILE(6);
    case 5: return PYFRAMEPRED_DOT_TILE(5);
    case 4: return PYFRAMEPRED_DOT_TILE(4);
    case 3: return PYFRAMEPRED_DOT_TILE(3);
    case 2: return PYFRAMEPRED_DOT_TILE(2);
    default: return PYFRAMEPRED_DOT_TILE(1);
  }
#undef PYFRAMEPRED_DOT_TILE
}

// Positions per block (its packed g: 32 KiB at Co = 128).
constexpr int64_t kBlockPositions = 128;

// The weight gradient for bfloat16 g and input with Co a multiple of 16, added into the float32
// partial sums `acc` (shares, kh * kw * Ci_w, Co), one share per thread at most (the input's
// channels: the first Ci of Ci_w, as the tile kernel's).
void weight_grad_bf16_into(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh,
                           int64_t kw, const at::Tensor& acc) {
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = grad_out.size(1), nN = Co / 16;
  const int64_t rows = B * H, pw = kw / 2;
  const int64_t pairs = (W + 1) / 2, chunks = (W + kChunk - 1) / kChunk;
  const int64_t Up = pairs + (kw - 1) / 2;  // pair u = k + j / 2 for pair k of tap column j
  const at::Tensor xn = input.permute({0, 2, 3, 1}).contiguous();  // NHWC: a view if channels_last
  const at::Tensor g = grad_out.permute({0, 2, 3, 1}).contiguous();
  at::Tensor xpk_t = at::empty({2 * rows * Up * Ci}, input.options().dtype(at::kInt));
  uint32_t* xpk = reinterpret_cast<uint32_t*>(xpk_t.data_ptr<int32_t>());
  pack_x(reinterpret_cast<const bf16*>(xn.const_data_ptr<at::BFloat16>()), rows, W, Ci, pw, Up, xpk);
  const bf16* gd = reinterpret_cast<const bf16*>(g.const_data_ptr<at::BFloat16>());
  const int64_t columns = acc.size(1), Ci_w = columns / (kh * kw);
  const int64_t shares = acc.size(0);
  float* accd = acc.data_ptr<float>();
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockPositions / (chunks * kChunk));
  const int64_t x_row = Up * Ci;
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    at::Tensor gbuf_t = at::empty({rows_per_block * chunks * nN * kTileElems}, input.options());
    bf16* gbuf = reinterpret_cast<bf16*>(gbuf_t.data_ptr<at::BFloat16>());
    for (int64_t share = first; share < last; ++share) {
      const int64_t r_begin = rows * share / shares, r_end = rows * (share + 1) / shares;
      float* mine = accd + share * columns * Co;
      for (int64_t r0 = r_begin; r0 < r_end;) {
        const int64_t y0 = r0 % H;  // a block: rows of one image
        const int64_t R = std::min({r_end - r0, rows_per_block, H - y0});
        pack_g(gd + r0 * W * Co, W, Co, chunks, R, gbuf);
        for (int64_t n = 0; n < nN;) {
          const int nv = nN - n >= 4 ? 4 : (nN - n >= 2 ? 2 : 1);
          const bf16* gp = gbuf + n * kTileElems;
          for (int64_t i = 0; i < kh; ++i) {
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t di = i - kh / 2;
              // The row r0's pack of the tap's parity, at pair k = 0 of the tap's column shift.
              const uint32_t* xj = xpk + ((j % 2) * rows + r0) * x_row + (j / 2) * Ci;
              for (int64_t ci = 0; ci < Ci; ci += kMR) {
                const int cols = static_cast<int>(std::min<int64_t>(kMR, Ci - ci));
                float* a = mine + ((i * kw + j) * Ci_w + ci) * Co + n * 16;
                if (nv == 4) {
                  tile_columns<4>(cols, xj + ci, x_row, gp, chunks, nN, pairs, H, y0, di, R, Ci, Co, a);
                } else if (nv == 2) {
                  tile_columns<2>(cols, xj + ci, x_row, gp, chunks, nN, pairs, H, y0, di, R, Ci, Co, a);
                } else {
                  tile_columns<1>(cols, xj + ci, x_row, gp, chunks, nN, pairs, H, y0, di, R, Ci, Co, a);
                }
              }
            }
          }
          n += nv;
        }
        r0 += R;
      }
    }
  });
}

}  // namespace dot
#endif  // AVX512-BF16

// Whether a bfloat16 kernel of this level (the tile unit's, else VDPBF16PS') takes the input.
bool bf16_kernel(const at::Tensor& input, int64_t Co) {
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  if (input.scalar_type() != at::kBFloat16 || Co % 16 != 0 || B * H * W == 0 || Ci == 0) return false;
#ifdef PYFRAMEPRED_AMX_KERNEL
  if (Ci % 16 == 0) return true;
#endif
#ifdef PYFRAMEPRED_DOT_BF16_KERNEL
  return true;
#else
  return false;
#endif
}

#if defined(PYFRAMEPRED_AMX_KERNEL) || defined(PYFRAMEPRED_DOT_BF16_KERNEL)
// The products of the bfloat16 kernel that takes the input (bf16_kernel) added into float32
// partial sums (shares, kh * kw * Ci_w, Co), allocated zeroed (Ci_w = Ci) where `sum` is
// undefined; a defined one may be laid out for more input channels than the input's, which are
// then the first ones (WeightGradSum's leading channels).
void weight_grad_bf16_sum(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh,
                          int64_t kw, at::Tensor& sum) {
  const int64_t Co = grad_out.size(1), columns = kh * kw * input.size(1);
  if (!sum.defined()) {
    const int64_t rows = input.size(0) * input.size(2);
    const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
    sum = scratch_zeros({shares, columns, Co}, input.options().dtype(at::kFloat));
  }
  TORCH_CHECK(sum.dim() == 3 && sum.size(1) >= columns && sum.size(1) % (kh * kw) == 0 &&
                  sum.size(2) == Co && sum.scalar_type() == at::kFloat && sum.is_contiguous(),
              "conv2d_weight_grad: partial sums of another weight's shape");
#ifdef PYFRAMEPRED_AMX_KERNEL
  if (input.size(1) % 16 == 0) {
    amx::weight_grad_bf16_into(grad_out, input, kh, kw, sum);
    return;
  }
#endif
#ifdef PYFRAMEPRED_DOT_BF16_KERNEL
  dot::weight_grad_bf16_into(grad_out, input, kh, kw, sum);
#endif
}
#endif

// WeightGradSum (conv_weight_grad.h): the bfloat16 kernels' products added into float32 partial
// sums that the first call allocates, one rounding in finish.
bool weight_grad_sum_add(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh,
                         int64_t kw, at::Tensor& sum) {
#if defined(PYFRAMEPRED_AMX_KERNEL) || defined(PYFRAMEPRED_DOT_BF16_KERNEL)
  check_conv2d_weight_grad_args(grad_out, input, kh, kw);
  const int64_t Co = grad_out.size(1);
  if (!bf16_kernel(input, Co)) return false;
#if !defined(PYFRAMEPRED_AMX_KERNEL)
  // Where the operator runs a 3x3 gradient as Winograd (conv2d_weight_grad_cpu), that is faster
  // than summing the direct kernel's products: the caller adds the operator's results.
  if (kh == 3 && kw == 3 && input.size(1) % kVL == 0 && Co % kVL == 0) return false;
#endif
  weight_grad_bf16_sum(grad_out, input, kh, kw, sum);
  return true;
#else
  return false;
#endif
}

at::Tensor weight_grad_sum_finish(const at::Tensor& sum, int64_t kh, int64_t kw,
                                  const at::Tensor& input) {
#if defined(PYFRAMEPRED_AMX_KERNEL) || defined(PYFRAMEPRED_DOT_BF16_KERNEL)
  return bf16_pairs::finish(sum.const_data_ptr<float>(), sum.size(0), sum.size(2), kh, kw,
                            input.size(1), input);
#else
  TORCH_CHECK(false, "conv2d_weight_grad: no partial sums at this ISA level");
#endif
}

// The direct kernels: any kernel size (conv2d_weight_grad_cpu below takes 3x3 to the Winograd
// domain where the channels allow).
at::Tensor weight_grad_direct(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = grad_out.size(1);
#if defined(PYFRAMEPRED_AMX_KERNEL) || defined(PYFRAMEPRED_DOT_BF16_KERNEL)
  if (bf16_kernel(input, Co)) {
    at::Tensor sum;
    weight_grad_bf16_sum(grad_out, input, kh, kw, sum);
    return weight_grad_sum_finish(sum, kh, kw, input);
  }
#endif
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

// ---- conv2d_same: 3x3 convolutions as Winograd F(4x4, 3x3) (float32) and F(2x2, 3x3) (bfloat16)
//
// The ConvLSTM layer's 3x3 convolutions (forward, and the data gradients as convolutions with the
// flipped, transposed weight) in the Winograd domain of Lavin & Gray (2016): each kM x kM block of
// outputs ("tile") comes from a (kM + 2)^2 patch d of the input as A^T [ (G w G^T) . (B^T d B) ] A,
// so the convolution's multiply-adds become (kM + 2)^2 independent GEMMs (one per position of the
// transformed patch) of fewer FLOPs -- 2.25x fewer than direct for F(2x2, 3x3), 4x for F(4x4, 3x3)
// -- plus transforms of a few multiply-adds per value. Why: oneDNN runs these convolutions near
// the FMA peak (~200 GFLOP/s on 2 Zen 4 cores), so fewer FLOPs are what is left; the convolutions
// are 80-90% of the layer's float32 training step. F(2x2, 3x3)'s transforms have coefficients 0,
// +-1 and 1/2 and its float32 results are as close to float64 as the direct convolution's;
// float32 runs F(4x4, 3x3), 1.1-1.4x faster than F(2x2, 3x3) at the layer's shapes on 2 Zen 4
// cores, whose larger coefficients cost a few bits (Tiling<4> below; tests/test_conv2d_same.py
// bounds the error). bfloat16 keeps F(2x2, 3x3): its V and U are rounded to bfloat16.
//
// Layout: NHWC (channels_last memory), channels innermost, so every transform is whole vectors of
// channels. Work is split into blocks of kT tiles sized so that a block's transformed input
// V[kA^2][kT][Ci] and products M[kA^2][kT][kNV vectors] stay in L2; per block: the input
// transform into V, then per group of kNV vectors of output channels the kA^2 GEMMs M = V x U
// (register tiles of kMR tiles x kNV vectors, as the weight-gradient kernel above) and the output
// transform of that group straight into y. U = G w G^T, (kA^2, Ci, Co), is computed once per call.
namespace winograd {

// The Winograd tilings of a 3x3 kernel, F(kM x kM, 3x3): a tile of kM x kM outputs from an input
// patch d of kA = kM + 2 values a side, as A^T [ (G w G^T) . (B^T d B) ] A -- kA^2 multiplies per
// tile and channel pair instead of 9 kM^2. The matrices come from the interpolation points of
// Lavin & Gray's construction (plus the point at infinity).
template <int kM>
struct Tiling;

// F(2x2, 3x3), points 0, 1, -1: 16 multiplies for 4 outputs (2.25x fewer than direct); additions
// and halvings only, so float32 results stay as close to float64 as the direct convolution's.
// bfloat16 runs it: its V and U are rounded to bfloat16, and larger coefficients magnify that
// (scripts/winograd_error.py emulates it: 2.5x the direct bf16 convolution's RMS error here,
// 8-10x for F(3x3, 3x3) and F(4x4, 3x3)).
template <>
struct Tiling<2> {
  static constexpr int kA = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float G[4][3] = {{1, 0, 0}, {.5f, .5f, .5f}, {.5f, -.5f, .5f}, {0, 0, 1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

// F(4x4, 3x3), points 0, 1, -1, 2, -1/2: 36 multiplies for 16 outputs (4x fewer than direct,
// 1.78x fewer than F(2x2, 3x3)). Its coefficients up to 8 cost accuracy: on the layer's shapes
// its float32 error against float64 is 3-17x the direct float32 convolution's (within 5e-6 of the
// outputs' scale), where the points 0, +-1, +-2 gave 14-34x in an emulation of the transforms
// (tests/test_conv2d_same.py bounds it).
template <>
struct Tiling<4> {
  static constexpr int kA = 6;
  static constexpr float BT[6][6] = {{1, 1.5f, -2, -1.5f, 1, 0},  {0, -1, -2.5f, -.5f, 1, 0},
                                     {0, 1, .5f, -2.5f, 1, 0},    {0, -.5f, -1, .5f, 1, 0},
                                     {0, 2, -1, -2, 1, 0},        {0, 1, 1.5f, -2, -1.5f, 1}};
  static constexpr float G[6][3] = {{1, 0, 0},
                                    {-1.f / 3, -1.f / 3, -1.f / 3},
                                    {1.f / 3, -1.f / 3, 1.f / 3},
                                    {1.f / 15, 2.f / 15, 4.f / 15},
                                    {-16.f / 15, 8.f / 15, -4.f / 15},
                                    {0, 0, 1}};
  static constexpr float AT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -.5f, 0}, {0, 1, 1, 4, .25f, 0}, {0, 1, -1, 8, -.125f, 1}};
};

// sum over j < N of coef(j) * in[j], for vectors, with coef(j) a constant once inlined: unrolled,
// so that the zero terms and the multiplies by +-1 of the transforms' constant matrices fold away
// (float arithmetic may not drop `+ 0 * x` by itself). The positive terms come first, so that a
// -1 costs a subtraction rather than a negation.
template <int N, class Coef>
C10_ALWAYS_INLINE Vec combine(Coef coef, const Vec (&in)[N]) {
  Vec acc(0.f);
  bool first = true;
#pragma GCC unroll 16
  for (int n = 0; n < 2 * N; ++n) {
    const int j = n % N;
    const float c = coef(j);
    if (c == 0.f || (n < N) != (c > 0.f)) continue;
    if (first) {
      acc = c == 1.f ? in[j] : (c == -1.f ? in[j].neg() : in[j] * Vec(c));
    } else {
      acc = c == 1.f ? acc + in[j] : (c == -1.f ? acc - in[j] : at::vec::fmadd(Vec(c), in[j], acc));
    }
    first = false;
  }
  return acc;
}

// out = m in, and out = m^T in (mat_t_vec), for the R x C constant matrices of a Tiling.
template <int R, int C>
C10_ALWAYS_INLINE void mat_vec(const float (&m)[R][C], const Vec (&in)[C], Vec (&out)[R]) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) out[i] = combine<C>([&](int j) { return m[i][j]; }, in);
}

template <int R, int C>
C10_ALWAYS_INLINE void mat_t_vec(const float (&m)[R][C], const Vec (&in)[R], Vec (&out)[C]) {
#pragma GCC unroll 8
  for (int j = 0; j < C; ++j) out[j] = combine<R>([&](int i) { return m[i][j]; }, in);
}

// U[k][ci][co], k = kA a + b: sum over i, j of G[a][i] w[co][ci][i][j] G[b][j], from the float32
// weight w (Co, Ci, 3, 3); stored through Flavour::store_u (float32 as is, bfloat16 in pairs).
template <class Flavour>
void transform_weight(const float* w, int64_t Co, int64_t Ci, typename Flavour::u_t* u) {
  using T = Tiling<Flavour::kM>;
  constexpr int kA = T::kA;
  at::parallel_for(0, Co, 16, [&](int64_t first, int64_t last) {
    for (int64_t co = first; co < last; ++co) {
      for (int64_t ci = 0; ci < Ci; ++ci) {
        const float* g = w + (co * Ci + ci) * 9;
        float t[kA][3];  // G g
        for (int a = 0; a < kA; ++a) {
          for (int j = 0; j < 3; ++j) {
            t[a][j] = T::G[a][0] * g[j] + T::G[a][1] * g[3 + j] + T::G[a][2] * g[6 + j];
          }
        }
        for (int a = 0; a < kA; ++a) {
          for (int b = 0; b < kA; ++b) {
            Flavour::store_u(u, a * kA + b, ci, co, Ci, Co,
                             t[a][0] * T::G[b][0] + t[a][1] * T::G[b][1] + t[a][2] * T::G[b][2]);
          }
        }
      }
    }
  });
}

// float32: V, U and the GEMMs in float32 (FMA).
struct F32 {
  static constexpr int kM = 4;  // F(4x4, 3x3)
  using in_t = float;
  using v_t = float;
  using u_t = float;
  static Vec load(const float* p) { return Vec::loadu(p); }
  static void store_v(float* p, const Vec& v) { v.store(p); }
  static void store_y(float* p, const Vec& v) { v.store(p); }
  static void store_u(float* u, int k, int64_t ci, int64_t co, int64_t Ci, int64_t Co, float v) {
    u[(k * Ci + ci) * Co + co] = v;
  }
  static const float* u_at(const float* u, int k, int64_t Ci, int64_t Co, int64_t co) {
    return u + k * Ci * Co + co;
  }
  // The register tile of both Winograd GEMMs, kMR_ rows by kNV_ vectors:
  //   c[r][...] (+)= sum over s < steps of a[r * a_row + s * a_step] * b[s * b_step + ...],
  // c starting from zero or (accumulate) from its values. conv3x3: rows are tiles, the reduction
  // runs over input channels; the weight gradient: rows are input channels, over tiles.
  template <int kNV_, int kMR_>
  static void dot_tile(const float* a, int64_t a_row, int64_t a_step, const float* b,
                       int64_t b_step, int64_t steps, float* c, int64_t c_stride, bool accumulate) {
    Vec acc[kMR_][kNV_];
    for (int r = 0; r < kMR_; ++r) {
      for (int n = 0; n < kNV_; ++n) {
        acc[r][n] = accumulate ? Vec::loadu(c + r * c_stride + n * kVL) : Vec(0.f);
      }
    }
    for (int64_t s = 0; s < steps; ++s) {
      Vec bv[kNV_];
      for (int n = 0; n < kNV_; ++n) bv[n] = Vec::loadu(b + s * b_step + n * kVL);
      for (int r = 0; r < kMR_; ++r) {
        const Vec av(a[r * a_row + s * a_step]);
        for (int n = 0; n < kNV_; ++n) acc[r][n] = at::vec::fmadd(av, bv[n], acc[r][n]);
      }
    }
    for (int r = 0; r < kMR_; ++r) {
      for (int n = 0; n < kNV_; ++n) acc[r][n].store(c + r * c_stride + n * kVL);
    }
  }
};

#if defined(PYFRAMEPRED_DOT_BF16_KERNEL) && !defined(PYFRAMEPRED_AMX_KERNEL)
// bfloat16 at the avx512_bf16 level (AMD Zen 4, Intel Cooper Lake; not at the amx level, where
// oneDNN's direct convolutions run on the tile unit, several times faster than VDPBF16PS): the
// transforms in float32, V and U rounded once to
// bfloat16 and multiplied by VDPBF16PS, which adds the products of a pair of input channels
// (2c, 2c + 1) per float32 lane -- V's channels are pairs already (a 32-bit broadcast), U is stored
// as (k, Ci / 2, Co, 2). The products and their sums stay float32 until the output's rounding.
struct BF16 {
  static constexpr int kM = 2;  // F(2x2, 3x3)
  using in_t = at::BFloat16;
  using v_t = uint16_t;
  using u_t = uint16_t;
  static Vec load(const at::BFloat16* p) { return load_vec(p); }
  static void store_v(uint16_t* p, const Vec& v) { store_vec(reinterpret_cast<at::BFloat16*>(p), v); }
  static void store_y(at::BFloat16* p, const Vec& v) { store_vec(p, v); }
  static void store_u(uint16_t* u, int k, int64_t ci, int64_t co, int64_t Ci, int64_t Co, float v) {
    u[((k * (Ci / 2) + ci / 2) * Co + co) * 2 + ci % 2] = c10::BFloat16(v).x;
  }
  static const uint16_t* u_at(const uint16_t* u, int k, int64_t Ci, int64_t Co, int64_t co) {
    return u + k * Ci * Co + co * 2;
  }
  // dot_tile of F32 on VDPBF16PS: a's elements are pairs (one 32-bit word: a[r * a_row +
  // s * a_step] and the next), b's vectors 16 pairs (32 bfloat16 from b + s * b_step).
  template <int kNV_, int kMR_>
  static void dot_tile(const uint16_t* a, int64_t a_row, int64_t a_step, const uint16_t* b,
                       int64_t b_step, int64_t steps, float* c, int64_t c_stride, bool accumulate) {
    __m512 acc[kMR_][kNV_];
    for (int r = 0; r < kMR_; ++r) {
      for (int n = 0; n < kNV_; ++n) {
        acc[r][n] = accumulate ? _mm512_loadu_ps(c + r * c_stride + n * kVL) : _mm512_setzero_ps();
      }
    }
    for (int64_t s = 0; s < steps; ++s) {
      __m512bh bv[kNV_];
      for (int n = 0; n < kNV_; ++n) {
        bv[n] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + s * b_step + n * 2 * kVL));
      }
      for (int r = 0; r < kMR_; ++r) {
        uint32_t pair;
        std::memcpy(&pair, a + r * a_row + s * a_step, sizeof(pair));
        const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
        for (int n = 0; n < kNV_; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], av, bv[n]);
      }
    }
    for (int r = 0; r < kMR_; ++r) {
      for (int n = 0; n < kNV_; ++n) _mm512_storeu_ps(c + r * c_stride + n * kVL, acc[r][n]);
    }
  }
};
#endif

template <class Flavour, int kNV_>
void gemm_rows(const typename Flavour::v_t* v, int64_t Ci, const typename Flavour::u_t* u,
               int64_t Co, float* m, int64_t m_stride, int64_t rows) {  // rows: a multiple of kMR
  for (int64_t r = 0; r < rows; r += kMR) {
    // u's rows: Co values (F32) or Co pairs (BF16, whose v steps by pairs of channels).
    constexpr int64_t kPair = std::is_same_v<typename Flavour::v_t, float> ? 1 : 2;
    Flavour::template dot_tile<kNV_, kMR>(v + r * Ci, Ci, kPair, u, Co * kPair, Ci / kPair,
                                          m + r * m_stride, m_stride, false);
  }
}

// Where an addend's element (b, c, y, x) lies: b * b + c * c + y * h + x * w elements from its
// start, with the members below (a tensor's strides, any layout).
struct AddStrides {
  int64_t b, c, h, w;
};

// The input pixels of tile t of a block (from tile t0) under its kA x kA patch: null outside the
// frame, and all null for t >= nt (no tile).
template <int kM, class In, int kA = Tiling<kM>::kA>
void tile_patch(const In* x, int64_t H, int64_t W, int64_t Ci, int64_t t0, int64_t t, int64_t nt,
                const In* p[kA][kA]) {
  const int64_t TH = (H + kM - 1) / kM, TW = (W + kM - 1) / kM;
  const int64_t tile = t0 + t, b = tile / (TH * TW), r = tile % (TH * TW);
  const int64_t y0 = (r / TW) * kM - 1, x0 = (r % TW) * kM - 1;
  for (int i = 0; i < kA; ++i) {
    for (int j = 0; j < kA; ++j) {
      const int64_t yy = y0 + i, xx = x0 + j;
      const bool inside = t < nt && yy >= 0 && yy < H && xx >= 0 && xx < W;
      p[i][j] = inside ? x + ((b * H + yy) * W + xx) * Ci : nullptr;
    }
  }
}

// emit(k, v) of each (B^T d B)[k], v the channels c .. c + kVL of the kA x kA patch p (null:
// outside the frame, zero), a row of the transform at a time: the input transform of conv3x3
// (which stores each row as it comes: holding all kA^2 vectors first cost its bfloat16 flavour
// ~5%) and of the weight gradient.
template <class Flavour, class Emit, class T = Tiling<Flavour::kM>>
C10_ALWAYS_INLINE void input_transform(const typename Flavour::in_t* const p[T::kA][T::kA],
                                       int64_t c, Emit emit) {
  constexpr int kA = T::kA;
  Vec d[kA][kA];  // B^T d
  for (int j = 0; j < kA; ++j) {  // B^T d: columns
    Vec col[kA], out[kA];
    for (int i = 0; i < kA; ++i) col[i] = p[i][j] != nullptr ? Flavour::load(p[i][j] + c) : Vec(0.f);
    mat_vec(T::BT, col, out);
    for (int i = 0; i < kA; ++i) d[i][j] = out[i];
  }
  for (int i = 0; i < kA; ++i) {  // (B^T d) B: rows
    Vec out[kA];
    mat_vec(T::BT, d[i], out);
    for (int j = 0; j < kA; ++j) emit(i * kA + j, out[j]);
  }
}

// y (B, H, W, Co) NHWC = x (B, H, W, Ci) NHWC convolved with the 3x3 weight whose transform is u
// (Flavour's layout of (kA^2, Ci, Co)), plus `add` where not null: (B, Co, H, W) with strides `as`,
// read in place -- vectors of channels where they are contiguous (channels_last frames, whatever
// the batch stride: e.g. a step of a batch-major sequence's gradient), else gathered one value
// per channel (NCHW frames, the layout of the gradients an NCHW model hands the ConvLSTM layer,
// which runs channels_last) rather than brought into NHWC by a pass of its own. Ci and Co
// multiples of kVL.
template <class Flavour>
void conv3x3(const typename Flavour::in_t* x, const typename Flavour::u_t* u,
             const typename Flavour::in_t* add, AddStrides as, typename Flavour::in_t* y,
             int64_t B, int64_t H, int64_t W, int64_t Ci, int64_t Co) {
  using v_t = typename Flavour::v_t;
  using T = Tiling<Flavour::kM>;
  constexpr int kM = Flavour::kM, kA = T::kA, kK = kA * kA;  // kK: the GEMMs, one per position
  const int64_t TH = (H + kM - 1) / kM, TW = (W + kM - 1) / kM, tiles = B * TH * TW;
  const int64_t group = std::min<int64_t>(Co, kNV * kVL);  // output channels per GEMM pass
  // Tiles per block: V and M of a block in about 256 KiB (L2 is 512 KiB-2 MiB on the CPUs this
  // runs on); at least one register tile, and enough blocks for every thread.
  const int64_t threads = at::get_num_threads();
  int64_t kT = (256 << 10) / static_cast<int64_t>(kK * (sizeof(v_t) * Ci + sizeof(float) * group));
  kT = std::min<int64_t>(kT, (tiles + threads - 1) / threads);
  kT = std::clamp<int64_t>((kT + kMR - 1) / kMR * kMR, kMR, 96);
  const int64_t blocks = (tiles + kT - 1) / kT;
  // The addend's kVL channels from co at pixel (b, yy, xx).
  const auto addend = [&](int64_t b, int64_t yy, int64_t xx, int64_t co) -> Vec {
    const auto* p = add + b * as.b + co * as.c + yy * as.h + xx * as.w;
    if (as.c == 1) return Flavour::load(p);
    alignas(64) float v[kVL];
    for (int64_t l = 0; l < kVL; ++l) v[l] = static_cast<float>(p[l * as.c]);
    return Vec::loadu(v);
  };
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<v_t> v_buf(kK * kT * Ci);
    std::vector<float> m_buf(kK * kT * group);
    v_t* V = v_buf.data();
    float* M = m_buf.data();
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t t0 = blk * kT, nt = std::min(kT, tiles - t0);
      const int64_t rows = (nt + kMR - 1) / kMR * kMR;  // a last partial register tile: zeros
      // Input transform: V[k][t][ci] = (B^T d B)[k] of the tile's kA x kA patch (zero outside).
      for (int64_t t = 0; t < nt; ++t) {
        const typename Flavour::in_t* p[kA][kA];
        tile_patch<kM>(x, H, W, Ci, t0, t, nt, p);
        for (int64_t c = 0; c < Ci; c += kVL) {
          input_transform<Flavour>(p, c, [&](int k, const Vec& v) {
            Flavour::store_v(V + (k * kT + t) * Ci + c, v);
          });
        }
      }
      for (int k = 0; k < kK; ++k) {
        std::fill(V + (k * kT + nt) * Ci, V + (k * kT + rows) * Ci, v_t(0));
      }
      for (int64_t co0 = 0; co0 < Co; co0 += group) {
        const int64_t nc = std::min(group, Co - co0);
        const int nv = static_cast<int>(nc / kVL);
        for (int k = 0; k < kK; ++k) {  // the GEMMs: M[k] = V[k] x U[k][:, co0 : co0 + nc]
          const v_t* v = V + k * kT * Ci;
          float* m = M + k * kT * group;
          for (int n = 0; n < nv;) {  // kNV vectors at a time, then 2 and 1
            const int take = nv - n >= kNV ? kNV : (nv - n >= 2 ? 2 : 1);
            const auto* uk = Flavour::u_at(u, k, Ci, Co, co0 + n * kVL);
            if (take == kNV) {
              gemm_rows<Flavour, kNV>(v, Ci, uk, Co, m + n * kVL, group, rows);
            } else if (take == 2) {
              gemm_rows<Flavour, 2>(v, Ci, uk, Co, m + n * kVL, group, rows);
            } else {
              gemm_rows<Flavour, 1>(v, Ci, uk, Co, m + n * kVL, group, rows);
            }
            n += take;
          }
        }
        // Output transform: the tile's kM x kM outputs A^T M A, those inside the frame stored.
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t tile = t0 + t, b = tile / (TH * TW), r = tile % (TH * TW);
          const int64_t oy = (r / TW) * kM, ox = (r % TW) * kM;
          const int rows_in = static_cast<int>(std::min<int64_t>(kM, H - oy));
          const int cols_in = static_cast<int>(std::min<int64_t>(kM, W - ox));
          for (int64_t c = 0; c < nc; c += kVL) {
            Vec s[kM][kA];  // A^T M
            for (int j = 0; j < kA; ++j) {
              Vec col[kA], out[kM];
              for (int i = 0; i < kA; ++i) col[i] = Vec::loadu(M + ((i * kA + j) * kT + t) * group + c);
              mat_vec(T::AT, col, out);
              for (int i = 0; i < kM; ++i) s[i][j] = out[i];
            }
            // (A^T M) A; loops of constant length, so that s and out stay in registers.
#pragma GCC unroll 4
            for (int i = 0; i < kM; ++i) {
              if (i >= rows_in) break;
              Vec out[kM];
              mat_vec(T::AT, s[i], out);
              const int64_t at = ((b * H + oy + i) * W + ox) * Co + co0 + c;
#pragma GCC unroll 4
              for (int j = 0; j < kM; ++j) {
                if (j >= cols_in) break;
                if (add != nullptr) out[j] = out[j] + addend(b, oy + i, ox + j, co0 + c);
                Flavour::store_y(y + at + j * Co, out[j]);
              }
            }
          }
        }
      }
    }
  });
}

// The weight's transform for Flavour's conv3x3, (kA^2, Ci, Co) elements in Flavour's layout: what
// PreparedConv::u holds (float32, or bfloat16 pairs stored as bfloat16).
template <class Flavour>
at::Tensor transform(const at::Tensor& weight) {
  const int64_t Co = weight.size(0), Ci = weight.size(1);
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const auto dtype = std::is_same_v<typename Flavour::u_t, float> ? at::kFloat : at::kBFloat16;
  constexpr int kA = Tiling<Flavour::kM>::kA;
  at::Tensor u = at::empty({kA * kA, Ci, Co}, weight.options().dtype(dtype));
  transform_weight<Flavour>(w.const_data_ptr<float>(), Co, Ci,
                            reinterpret_cast<typename Flavour::u_t*>(u.data_ptr()));
  return u;
}

// The convolution through Flavour with a transformed weight u (transform<Flavour>): input, and
// `addend` (added to the result; read in place, any strides) where defined,
// (B, Ci, H, W) and (B, Co, H, W) in scalar_t; the result written into `out` where it is a
// channels_last-contiguous (B, Co, H, W) of scalar_t (copied into any other `out`), else a new
// tensor in the input's memory format.
template <class Flavour>
at::Tensor run_transformed(const at::Tensor& input, const at::Tensor& u, const at::Tensor& addend,
                           const at::Tensor& out) {
  using in_t = typename Flavour::in_t;
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = u.size(2);
  const at::Tensor x = nhwc(input);
  const at::Tensor& a = addend;
  const AddStrides as = a.defined() ? AddStrides{a.stride(0), a.stride(1), a.stride(2), a.stride(3)}
                                    : AddStrides{};
  const bool into = out.defined() && out.scalar_type() == input.scalar_type() &&
                    out.sizes() == at::IntArrayRef({B, Co, H, W}) &&
                    out.is_contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = into ? out.permute({0, 2, 3, 1}) : at::empty({B, H, W, Co}, input.options());
  conv3x3<Flavour>(reinterpret_cast<const in_t*>(x.const_data_ptr()),
                   reinterpret_cast<const typename Flavour::u_t*>(u.const_data_ptr()),
                   a.defined() ? reinterpret_cast<const in_t*>(a.const_data_ptr()) : nullptr,
                   as, reinterpret_cast<in_t*>(y.data_ptr()), B, H, W, Ci, Co);
  if (into) return out;
  if (out.defined()) return out.copy_(y.permute({0, 3, 1, 2}));
  return y.permute({0, 3, 1, 2}).contiguous(input.suggest_memory_format());
}

// The convolution through Flavour: x (input) and the result in scalar_t, NHWC.
template <class Flavour>
at::Tensor run(const at::Tensor& input, const at::Tensor& weight) {
  return run_transformed<Flavour>(input, transform<Flavour>(weight), at::Tensor(), at::Tensor());
}

// ---- conv2d_weight_grad of 3x3 kernels in the Winograd domain ----------------------------------
//
// The Winograd convolution above, run backwards to the weight. A tile's outputs are
// A^T [U . V] A with U = G w G^T, so the tile adds (A dy A^T) . V to the gradient of U --
// elementwise in the kA x kA domain, dy the tile's kM x kM output gradients -- and the weight's
// gradient is G^T dU G of the sum over all tiles:
//   dU[k][ci][co] = sum over tiles t of V[k][t][ci] * Y[k][t][co],   Y = A dy A^T (kA x kA).
// These are kA^2 GEMMs reducing over the tiles: per tile and channel pair 16 multiply-adds for 4
// positions (F(2x2, 3x3)) or 36 for 16 (F(4x4, 3x3)), against the direct kernel's 36 or 144.
// Why: the direct kernels above run near the multiply-add peak (VDPBF16PS: ~370 of 404 GFLOP/s
// on 2 Zen 4 cores), and the weight gradients were the largest part of the layer's bf16 training
// step (46% at 4x64x[64]@64).
//
// Work: threads take equal shares of the tiles, each with its own float32 dU (kA^2, Ci, Co),
// summed in a fixed order at the end (deterministic for a given thread count, as the direct
// kernels). A share walks blocks of kT tiles: the block's V for all input channels, then per group
// of kNV vectors of output channels that group's Y and the kA^2 GEMMs into dU (register tiles of
// kMR input channels x kNV vectors, reducing over the block's tiles).
//
// Flavours (Flavour::kM, the tiling; Flavour::kPack tiles per reduction step):
//   F32   F(4x4, 3x3); V, Y and the products in float32 (FMA), one tile per step;
//   BF16  (avx512_bf16 level) F(2x2, 3x3); V and Y rounded once to bfloat16, as conv2d_same's
//         BF16 rounds V and U, and multiplied by VDPBF16PS, which adds a pair of tiles' products
//         per float32 lane: V and Y are stored as pairs of tiles (t, t + 1) interleaved per channel.
// Accuracy: float32 within 1-2.5x the error of ATen's direct weight gradient against float64 at the
// layer's shapes (the sum over many positions dominates the transforms' rounding; F(2x2, 3x3)
// was 0.3-0.8x); bfloat16 within ~2x the direct kernel's error on random data
// (tests/test_conv_weight_grad.py holds float32 to 1e-4 of the scale, bfloat16 to 4x).
namespace wgrad {

struct F32 {
  static constexpr int kM = 4;  // F(4x4, 3x3)
  using in_t = float;
  using st_t = float;  // what V and Y are stored as
  static constexpr int kPack = 1;
  static Vec load(const float* p) { return Vec::loadu(p); }
  // The channel vector of a step's tile (f[0]) at p.
  static void put(float* p, const Vec* f) { f[0].store(p); }
  using Gemm = winograd::F32;  // its dot_tile
};

#if defined(PYFRAMEPRED_DOT_BF16_KERNEL) && !defined(PYFRAMEPRED_AMX_KERNEL)
// vpermw indices interleaving the halves of a vector (element e takes element e / 2 of the lower
// half for even e, of the upper half for odd e).
alignas(64) constexpr int16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                 21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

struct BF16 {
  static constexpr int kM = 2;  // F(2x2, 3x3)
  using in_t = at::BFloat16;
  using st_t = uint16_t;
  static constexpr int kPack = 2;
  static Vec load(const at::BFloat16* p) { return load_vec(p); }
  // The 16 channels of a step's two tiles (f[0], f[1]) rounded to bfloat16, as 16 pairs at p.
  static void put(uint16_t* p, const Vec* f) {
    const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f[1], f[0]));  // f0 | f1
    _mm512_storeu_si512(p, _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both));
  }
  using Gemm = winograd::BF16;  // its dot_tile
};
#endif

// The weight gradient's register tile: dU rows ci .. ci + columns - 1 (+)= sum over the block's
// steps of V x Y -- Flavour::Gemm::dot_tile, with the input-channel count of the last, partial
// register tile as a run-time value.
template <class Flavour, int kNV_>
void gemm_columns(int columns, const typename Flavour::st_t* v, int64_t v_step,
                  const typename Flavour::st_t* y, int64_t y_step, int64_t steps, float* acc,
                  int64_t Co) {
  static_assert(kMR == 6, "gemm_columns lists the column counts 1..kMR");
  constexpr int P = Flavour::kPack;  // a row of V: an input channel's P tiles
#define PYFRAMEPRED_WGRAD_TILE(n) \
  Flavour::Gemm::template dot_tile<kNV_, n>(v, P, v_step, y, y_step, steps, acc, Co, true)
  switch (columns) {
    case 6: return PYFRAMEPRED_WGRAD_TILE(6);
    case 5: return PYFRAMEPRED_WGRAD_TILE(5);
    case 4: return PYFRAMEPRED_WGRAD_TILE(4);
    case 3: return PYFRAMEPRED_WGRAD_TILE(3);
    case 2: return PYFRAMEPRED_WGRAD_TILE(2);
    default: return PYFRAMEPRED_WGRAD_TILE(1);
  }
#undef PYFRAMEPRED_WGRAD_TILE
}

// The output gradients of tile t's kM x kM positions from channel co0 on: null outside the frame
// or for t >= nt.
template <int kM, class In>
void tile_grads(const In* dy, int64_t H, int64_t W, int64_t Co, int64_t co0, int64_t t0,
                int64_t t, int64_t nt, const In* q[kM][kM]) {
  const int64_t TH = (H + kM - 1) / kM, TW = (W + kM - 1) / kM;
  const int64_t tile = t0 + t, b = tile / (TH * TW), r = tile % (TH * TW);
  const int64_t oy = (r / TW) * kM, ox = (r % TW) * kM;
  for (int i = 0; i < kM; ++i) {
    for (int j = 0; j < kM; ++j) {
      const bool inside = t < nt && oy + i < H && ox + j < W;
      q[i][j] = inside ? dy + ((b * H + oy + i) * W + ox + j) * Co + co0 : nullptr;
    }
  }
}

// f[k][e] = (A g A^T)[k] of channels c .. c + kVL of the kM x kM gradients q (A = (A^T)^T).
template <class Flavour, int P, class T = Tiling<Flavour::kM>>
C10_ALWAYS_INLINE void grad_transform(const typename Flavour::in_t* const q[Flavour::kM][Flavour::kM],
                                      int64_t c, Vec f[T::kA * T::kA][P], int e) {
  constexpr int kM = Flavour::kM, kA = T::kA;
  Vec r[kA][kM];  // A g
  for (int j = 0; j < kM; ++j) {  // A g: columns
    Vec col[kM], out[kA];
    for (int i = 0; i < kM; ++i) col[i] = q[i][j] != nullptr ? Flavour::load(q[i][j] + c) : Vec(0.f);
    mat_t_vec(T::AT, col, out);
    for (int i = 0; i < kA; ++i) r[i][j] = out[i];
  }
  for (int i = 0; i < kA; ++i) {  // (A g) A^T: rows
    Vec out[kA];
    mat_t_vec(T::AT, r[i], out);
    for (int j = 0; j < kA; ++j) f[i * kA + j][e] = out[j];
  }
}

// dU (per share: (kA^2, Ci, Co) float32, zeroed) += the tiles [t_begin, t_end) of x (B, H, W, Ci)
// and dy (B, H, W, Co), both NHWC; Ci and Co multiples of kVL.
template <class Flavour>
void accumulate(const typename Flavour::in_t* x, const typename Flavour::in_t* dy, int64_t H,
                int64_t W, int64_t Ci, int64_t Co, int64_t t_begin, int64_t t_end, int64_t kT,
                float* dU) {
  using st_t = typename Flavour::st_t;
  constexpr int P = Flavour::kPack, kM = Flavour::kM, kA = Tiling<kM>::kA, kK = kA * kA;
  const int64_t group = std::min<int64_t>(Co, kNV * kVL);
  const int64_t kS = kT / P;  // reduction steps per block
  // V[((k * kS + s) * Ci + ci) * P + e] of tile s * P + e; Y likewise with `group` channels.
  std::vector<st_t> v_buf(kK * kT * Ci), y_buf(kK * kT * group);
  st_t* V = v_buf.data();
  st_t* Y = y_buf.data();
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kT) {
    const int64_t nt = std::min(kT, t_end - t0);
    const int64_t steps = (nt + P - 1) / P;
    // Input transform of the block: V = B^T d B of each tile's kA x kA patch (zero outside), a
    // reduction step (P tiles; a last pair's missing tile is zero, as is its Y) at a time.
    for (int64_t s = 0; s < steps; ++s) {
      const typename Flavour::in_t* p[P][kA][kA];
      for (int e = 0; e < P; ++e) tile_patch<kM>(x, H, W, Ci, t0, s * P + e, nt, p[e]);
      for (int64_t c = 0; c < Ci; c += kVL) {
        Vec f[kK][P];
        for (int e = 0; e < P; ++e) {
          input_transform<Flavour>(p[e], c, [&](int k, const Vec& v) { f[k][e] = v; });
        }
        for (int k = 0; k < kK; ++k) Flavour::put(V + ((k * kS + s) * Ci + c) * P, f[k]);
      }
    }
    for (int64_t co0 = 0; co0 < Co; co0 += group) {
      const int64_t nc = std::min(group, Co - co0);
      // Output-gradient transform of the group's channels: Y = A dy A^T of each tile's kM x kM
      // gradients (zero outside the frame).
      for (int64_t s = 0; s < steps; ++s) {
        const typename Flavour::in_t* q[P][kM][kM];
        for (int e = 0; e < P; ++e) tile_grads<kM>(dy, H, W, Co, co0, t0, s * P + e, nt, q[e]);
        for (int64_t c = 0; c < nc; c += kVL) {
          Vec f[kK][P];
          for (int e = 0; e < P; ++e) grad_transform<Flavour, P>(q[e], c, f, e);
          for (int k = 0; k < kK; ++k) Flavour::put(Y + ((k * kS + s) * group + c) * P, f[k]);
        }
      }
      // The kA^2 GEMMs: dU[k][ci][co0 ...] += sum over the block's steps of V[k] x Y[k].
      const int nv = static_cast<int>(nc / kVL);
      for (int k = 0; k < kK; ++k) {
        const st_t* vk = V + k * kS * Ci * P;
        const st_t* yk = Y + k * kS * group * P;
        for (int n = 0; n < nv;) {  // kNV vectors at a time, then 2 and 1
          const int take = nv - n >= kNV ? kNV : (nv - n >= 2 ? 2 : 1);
          for (int64_t ci = 0; ci < Ci; ci += kMR) {
            const int cols = static_cast<int>(std::min<int64_t>(kMR, Ci - ci));
            const st_t* v = vk + ci * P;
            const st_t* y = yk + n * kVL * P;
            float* acc = dU + (k * Ci + ci) * Co + co0 + n * kVL;
            if (take == kNV) {
              gemm_columns<Flavour, kNV>(cols, v, Ci * P, y, group * P, steps, acc, Co);
            } else if (take == 2) {
              gemm_columns<Flavour, 2>(cols, v, Ci * P, y, group * P, steps, acc, Co);
            } else {
              gemm_columns<Flavour, 1>(cols, v, Ci * P, y, group * P, steps, acc, Co);
            }
          }
          n += take;
        }
      }
    }
  }
}

// The weight gradient (Co, Ci, 3, 3) of conv2d_same in the input's dtype and memory format.
template <class Flavour>
at::Tensor run(const at::Tensor& grad_out, const at::Tensor& input) {
  using in_t = typename Flavour::in_t;
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = grad_out.size(1);
  const at::Tensor x = nhwc(input);  // views if channels_last
  const at::Tensor dy = nhwc(grad_out);
  constexpr int kM = Flavour::kM;
  using T = Tiling<kM>;
  constexpr int kA = T::kA, kK = kA * kA;
  const int64_t tiles = B * ((H + kM - 1) / kM) * ((W + kM - 1) / kM);
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles));
  const int64_t group = std::min<int64_t>(Co, kNV * kVL);
  // Tiles per block: the block's V and one group's Y in about 256 KiB, or in as much as the share's
  // dU takes where that is more -- every block loads and stores all of dU once, so a larger dU
  // needs longer blocks to amortise it (at (4, 64 -> 256, 64x64) on 2 Zen 4 cores, dU 1 MiB:
  // 7.9 ms in bf16 and 14.7 in float32 against 8.4 and 16.3 with 256 KiB blocks; the smaller
  // shapes of the layer unchanged); a multiple of the pack, at most 256 tiles.
  const int64_t st = sizeof(typename Flavour::st_t);
  const int64_t dU_bytes = kK * Ci * Co * static_cast<int64_t>(sizeof(float));
  int64_t kT = std::max<int64_t>(256 << 10, dU_bytes) / (kK * st * (Ci + group));
  kT = std::clamp<int64_t>(kT / Flavour::kPack * Flavour::kPack, Flavour::kPack, 256);
  at::Tensor acc = scratch_zeros({shares, kK, Ci, Co}, input.options().dtype(at::kFloat));
  float* accd = acc.data_ptr<float>();
  const auto* xd = reinterpret_cast<const in_t*>(x.const_data_ptr());
  const auto* dyd = reinterpret_cast<const in_t*>(dy.const_data_ptr());
  at::parallel_for(0, shares, 1, [&](int64_t first, int64_t last) {
    for (int64_t sh = first; sh < last; ++sh) {
      accumulate<Flavour>(xd, dyd, H, W, Ci, Co, tiles * sh / shares, tiles * (sh + 1) / shares,
                          kT, accd + sh * kK * Ci * Co);
    }
  });
  // dW = G^T dU G of the shares' sum (added in a fixed order), vectorised over the output
  // channels (contiguous in dU) into (3, 3, Ci, Co) float32, then rounded once to the input's
  // dtype as (Co, Ci, 3, 3) in its memory format. (Scalar, channel by channel, this took 11% of
  // the weight gradient at (4, 128 -> 256, 64x64).)
  at::Tensor dw = at::empty({3, 3, Ci, Co}, input.options().dtype(at::kFloat));
  float* od = dw.data_ptr<float>();
  at::parallel_for(0, Ci, 1, [&](int64_t first, int64_t last) {
    for (int64_t ci = first; ci < last; ++ci) {
      for (int64_t co = 0; co < Co; co += kVL) {
        Vec m[kA][kA];
        for (int k = 0; k < kK; ++k) {
          Vec sum = Vec::loadu(accd + (k * Ci + ci) * Co + co);
          for (int64_t sh = 1; sh < shares; ++sh) {
            sum = sum + Vec::loadu(accd + ((sh * kK + k) * Ci + ci) * Co + co);
          }
          m[k / kA][k % kA] = sum;
        }
        Vec t[3][kA];  // G^T m
        for (int b = 0; b < kA; ++b) {
          Vec col[kA], out[3];
          for (int a = 0; a < kA; ++a) col[a] = m[a][b];
          mat_t_vec(T::G, col, out);
          for (int i = 0; i < 3; ++i) t[i][b] = out[i];
        }
        for (int i = 0; i < 3; ++i) {  // (G^T m) G
          Vec out[3];
          mat_t_vec(T::G, t[i], out);
          for (int j = 0; j < 3; ++j) out[j].store(od + ((i * 3 + j) * Ci + ci) * Co + co);
        }
      }
    }
  });
  return at::empty({Co, Ci, 3, 3}, input.options().memory_format(input.suggest_memory_format()))
      .copy_(dw.permute({3, 2, 0, 1}));
}

}  // namespace wgrad

}  // namespace winograd

// conv2d_weight_grad: 3x3 kernels in the Winograd domain (wgrad) where the channels are whole
// vectors -- float32, and bfloat16 at the avx512_bf16 level (the amx level keeps its tile
// kernel) --, everything else by the direct kernels.
at::Tensor conv2d_weight_grad_cpu(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  check_conv2d_weight_grad_args(grad_out, input, kh, kw);
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = grad_out.size(1);
  const bool winograd = kh == 3 && kw == 3 && Ci % kVL == 0 && Co % kVL == 0 && B * H * W > 0 &&
                        Ci > 0 && Co > 0;
  if (winograd && input.scalar_type() == at::kFloat) {
    return winograd::wgrad::run<winograd::wgrad::F32>(grad_out, input);
  }
#if defined(PYFRAMEPRED_DOT_BF16_KERNEL) && !defined(PYFRAMEPRED_AMX_KERNEL)
  if (winograd && input.scalar_type() == at::kBFloat16) {
    return winograd::wgrad::run<winograd::wgrad::BF16>(grad_out, input);
  }
#endif
  return weight_grad_direct(grad_out, input, kh, kw);
}

at::Tensor conv2d_same_cpu(PYFRAMEPRED_CONV2D_SAME_PARAMS) {
  check_conv2d_same_args(input, weight);
  const int64_t B = input.size(0), Ci = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Co = weight.size(0);
  const bool winograd = weight.size(2) == 3 && weight.size(3) == 3 && Ci % kVL == 0 &&
                        Co % kVL == 0 && B * H * W > 0 && Ci > 0 && Co > 0;
  if (winograd && input.scalar_type() == at::kFloat) return winograd::run<winograd::F32>(input, weight);
#if defined(PYFRAMEPRED_DOT_BF16_KERNEL) && !defined(PYFRAMEPRED_AMX_KERNEL)
  if (winograd && input.scalar_type() == at::kBFloat16) {
    return winograd::run<winograd::BF16>(input, weight);
  }
#endif
  return conv2d_same_aten(input, weight);
}

// PreparedConv::run of this level's flavours: conv2d_same with a transformed weight.
template <class Flavour>
at::Tensor same_prepared(const at::Tensor& input, const at::Tensor& u, const at::Tensor& addend,
                         const at::Tensor& out) {
  check_prepared_conv_args(input, u, c10::CppTypeToScalarType<typename Flavour::in_t>::value,
                           addend);
  return winograd::run_transformed<Flavour>(input, u, addend, out);
}

// The 3x3 weight's transform for this level's Winograd conv2d_same of `dtype` input, with the
// kernel that runs it; nothing where conv2d_same would not run Winograd.
PreparedConv same_prepare(const at::Tensor& weight, at::ScalarType dtype) {
  if (weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3 ||
      weight.scalar_type() != dtype || weight.size(0) % kVL != 0 || weight.size(1) % kVL != 0 ||
      weight.size(0) == 0 || weight.size(1) == 0 || !weight.is_cpu()) {
    return {};
  }
  if (dtype == at::kFloat) {
    return {winograd::transform<winograd::F32>(weight), &same_prepared<winograd::F32>};
  }
#if defined(PYFRAMEPRED_DOT_BF16_KERNEL) && !defined(PYFRAMEPRED_AMX_KERNEL)
  if (dtype == at::kBFloat16) {
    return {winograd::transform<winograd::BF16>(weight), &same_prepared<winograd::BF16>};
  }
#endif
  return {};
}

}  // namespace

// This level's kernels, registered by cpu/dispatch.cpp.
const ConvKernels conv_kernels{&conv2d_weight_grad_cpu, &conv2d_same_cpu, &same_prepare,
                               &weight_grad_sum_add, &weight_grad_sum_finish};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pyframepred
