// Copies of a sequence of frames between the two layouts of a frame: planar (NCHW: each channel's
// pixels in a row) and interleaved (channels_last: each pixel's channels in a row) -- a transpose
// of every frame's (channels x pixels) matrix. The ConvLSTM layer runs channels_last on the CPU, so
// an NCHW input is copied into its frames once per call and the h sequence out of them once at the
// end (convlstm_layer_impl.h). ATen's copy_ took about 10 times as long for such a copy as for one
// between tensors of the same layout (16 against 1.6 ms for 42 MB); here it goes by tiles of kTile x kTile elements, transposed in registers (AVX-512:
// 16 x 16, AVX2: 8 x 8, 16-bit elements widened to 32-bit lanes for it; the portable level: one
// element at a time, in the same tile order), each work item a frame's block of kTile channels
// over all its pixels. On 2 Zen 4 cores at the layer's sizes, float32 and bfloat16: 2.4-7.4x
// faster than copy_ (2.3-6.8x at the AVX2 level); e.g. a (10, 4, 64, 64, 64) float32 sequence
// into the frames in 3.5 ms against 15.4 (benchmarks/results/frames_copy_rr_cpu_epyc-zen4*.md).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>

namespace pyframepred {
namespace cpu {
namespace CPU_CAPABILITY {  // one copy per ISA level (cpu/kernels.h)

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kTile = 16;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kTile = 8;
#else
constexpr int kTile = 8;
#endif

#if defined(CPU_CAPABILITY_AVX512)
// The 16 x 16 matrix of 32-bit lanes in r (row i: r[i]) transposed in place. Three rounds: within
// pairs of rows (unpack), within quadruples (64-bit shuffles: u[4g + k] holds column 4L + k of
// rows 4g..4g+3 in its 128-bit lane L), then across the four quadruples (128-bit shuffles).
inline void transpose_16x16(__m512 (&r)[16]) {
  __m512 u[16];
  for (int g = 0; g < 4; ++g) {
    const __m512 t0 = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]);
    const __m512 t1 = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
    const __m512 t2 = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
    const __m512 t3 = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
    u[4 * g] = _mm512_shuffle_ps(t0, t2, 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t0, t2, 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t1, t3, 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t1, t3, 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    // 0x88: lanes 0, 2 of each operand; 0xDD: lanes 1, 3.
    const __m512 a = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);   // lanes 0, 2 of quads 0, 1
    const __m512 b = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);   // lanes 1, 3 of quads 0, 1
    const __m512 c = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
    const __m512 d = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
    r[k] = _mm512_shuffle_f32x4(a, c, 0x88);       // lane 0 of all four quads: column k
    r[8 + k] = _mm512_shuffle_f32x4(a, c, 0xDD);   // lane 2: column 8 + k
    r[4 + k] = _mm512_shuffle_f32x4(b, d, 0x88);   // lane 1: column 4 + k
    r[12 + k] = _mm512_shuffle_f32x4(b, d, 0xDD);  // lane 3: column 12 + k
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
// The 8 x 8 matrix of 32-bit lanes in r transposed in place: pairs, quadruples (as above, within
// 128-bit lanes), then the two 128-bit halves.
inline void transpose_8x8(__m256 (&r)[8]) {
  __m256 u[8];
  for (int g = 0; g < 2; ++g) {
    const __m256 t0 = _mm256_unpacklo_ps(r[4 * g], r[4 * g + 1]);
    const __m256 t1 = _mm256_unpackhi_ps(r[4 * g], r[4 * g + 1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
    const __m256 t3 = _mm256_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
    u[4 * g] = _mm256_shuffle_ps(t0, t2, 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    u[4 * g + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);      // low halves: column k
    r[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);  // high halves: column 4 + k
  }
}
#endif

// d[j * ld + i] = s[i * ls + j] for i < rows, j < cols (rows, cols <= kTile), elements of
// sizeof(T) bytes (4: float; 2: bfloat16 and float16, moved as bits).
template <typename T>
inline void transpose_tile(const T* s, int64_t ls, int rows, int cols, T* d, int64_t ld) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 2);
  if (rows == kTile && cols == kTile) {
#if defined(CPU_CAPABILITY_AVX512)
    __m512 r[16];
    if constexpr (sizeof(T) == 4) {
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(s + i * ls);
      transpose_16x16(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(d + j * ld, r[j]);
    } else {  // 16-bit elements widened to 32-bit lanes and narrowed back (AVX512BW)
      for (int i = 0; i < 16; ++i) {
        const __m256i row = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i * ls));
        r[i] = _mm512_castsi512_ps(_mm512_cvtepu16_epi32(row));
      }
      transpose_16x16(r);
      for (int j = 0; j < 16; ++j) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j * ld),
                            _mm512_cvtepi32_epi16(_mm512_castps_si512(r[j])));
      }
    }
    return;
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (sizeof(T) == 4) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(reinterpret_cast<const float*>(s + i * ls));
      transpose_8x8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(reinterpret_cast<float*>(d + j * ld), r[j]);
    } else {  // 16-bit elements widened to 32-bit lanes; narrowed back by an unsigned pack
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const __m128i row = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * ls));
        r[i] = _mm256_castsi256_ps(_mm256_cvtepu16_epi32(row));
      }
      transpose_8x8(r);
      for (int j = 0; j < 8; ++j) {
        const __m256i w = _mm256_castps_si256(r[j]);
        // packus packs within 128-bit lanes (values < 2^16: exact): qwords 0 and 2 hold the row
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0x08);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + j * ld), _mm256_castsi256_si128(packed));
      }
    }
    return;
#endif
  }
  for (int j = 0; j < cols; ++j) {
    for (int i = 0; i < rows; ++i) d[j * ld + i] = s[i * ls + j];
  }
}

// A 4-d (B, C, H, W) or 5-d (A, B, C, H, W) tensor as frames: the strides of its two frame dims
// (sa, sb; A = 1 for 4-d), of its channels (sc) and of its pixels (sp), where the pixels of a
// frame lie at one stride (H == 1 or stride(H) == W * stride(W)).
struct FrameStrides {
  int64_t A, B, C, P;
  int64_t sa, sb, sc, sp;
};

inline std::optional<FrameStrides> frame_strides(const at::Tensor& t) {
  if (t.dim() != 4 && t.dim() != 5) return std::nullopt;
  const int64_t d = t.dim();
  const int64_t H = t.size(d - 2), W = t.size(d - 1);
  if (H > 1 && t.stride(d - 2) != W * t.stride(d - 1)) return std::nullopt;
  FrameStrides f;
  f.A = d == 5 ? t.size(0) : 1;
  f.sa = d == 5 ? t.stride(0) : 0;
  f.B = t.size(d - 4);
  f.sb = t.stride(d - 4);
  f.C = t.size(d - 3);
  f.sc = t.stride(d - 3);
  f.P = H * W;
  f.sp = W > 1 ? t.stride(d - 1) : t.stride(d - 2);
  return f;
}

// Whether no two elements of t share memory: ordered by stride, each dim steps past everything
// the smaller ones span (ATen's own checks answer "too hard" for tensors with gaps, such as the
// layer's frames of x inside its frames of x and h). Sorted by hand: a std::sort instantiated
// here would be compiled per ISA level, and the linker could keep an AVX copy for every caller
// (tests/test_cpu_isa.py checks the library for that).
inline bool non_overlapping(const at::Tensor& t) {
  int64_t stride[5], size[5], n = 0;  // the dims of size > 1, by increasing stride
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) < 2) continue;
    int64_t i = n++;
    for (; i > 0 && stride[i - 1] > t.stride(d); --i) {
      stride[i] = stride[i - 1];
      size[i] = size[i - 1];
    }
    stride[i] = t.stride(d);
    size[i] = t.size(d);
  }
  int64_t span = 1;  // elements from the first to one past the last, over the dims so far
  for (int64_t i = 0; i < n; ++i) {
    if (stride[i] < span) return false;
    span += (size[i] - 1) * stride[i];
  }
  return true;
}

// Whether the bytes a and b span overlap (a conservative answer: ranges, not elements).
inline bool shares_memory(const at::Tensor& a, const at::Tensor& b) {
  if (!a.storage().is_alias_of(b.storage())) return false;
  auto range = [](const at::Tensor& t) {
    const auto* first = static_cast<const char*>(t.const_data_ptr());
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    return std::make_pair(first, first + (last + 1) * t.element_size());
  };
  const auto [a0, a1] = range(a);
  const auto [b0, b1] = range(b);
  return a0 < b1 && b0 < a1;
}

// dst.copy_(src) where one side's frames are planar (pixel stride 1) and the other's interleaved
// (channel stride 1), both CPU tensors of one dtype of 4 or 2 bytes, the same sizes, dst not
// overlapping itself or src. Returns false, having written nothing, for any other case.
inline bool copy_frames(const at::Tensor& dst, const at::Tensor& src) {
  if (!dst.device().is_cpu() || !src.device().is_cpu() || dst.scalar_type() != src.scalar_type() ||
      !dst.sizes().equals(src.sizes()) || dst.numel() == 0) {
    return false;
  }
  const auto type = dst.scalar_type();
  if (type != at::kFloat && type != at::kBFloat16 && type != at::kHalf) return false;
  const auto fd = frame_strides(dst), fs = frame_strides(src);
  if (!fd || !fs || fd->C < 2 || fd->P < 2) return false;
  const bool to_interleaved = fs->sp == 1 && fd->sc == 1;
  const bool to_planar = fs->sc == 1 && fd->sp == 1;
  if (!(to_interleaved || to_planar)) return false;
  if (!non_overlapping(dst) || shares_memory(dst, src)) return false;
  const int64_t C = fd->C, P = fd->P, blocks = (C + kTile - 1) / kTile;
  const int64_t items = fd->A * fd->B * blocks;
  // Work items: a frame's block of kTile channels, over all its pixels, so that the planar side
  // is walked in order, kTile rows at a time (the interleaved side in kTile-element pieces).
  const int64_t item_bytes = P * kTile * static_cast<int64_t>(dst.element_size());
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(item_bytes, 1));
  auto run = [&](auto* d0, const auto* s0) {
    at::parallel_for(0, items, grain, [&](int64_t first, int64_t last) {
      for (int64_t it = first; it < last; ++it) {
        const int64_t c0 = (it % blocks) * kTile, frame = it / blocks;
        const int64_t a = frame / fd->B, b = frame % fd->B;
        const int rows = static_cast<int>(std::min<int64_t>(kTile, C - c0));
        const auto* s = s0 + a * fs->sa + b * fs->sb + c0 * fs->sc;
        auto* d = d0 + a * fd->sa + b * fd->sb + c0 * fd->sc;
        for (int64_t p = 0; p < P; p += kTile) {
          const int cols = static_cast<int>(std::min<int64_t>(kTile, P - p));
          if (to_interleaved) {  // channels x pixels -> pixels x channels
            transpose_tile(s + p, fs->sc, rows, cols, d + p * fd->sp, fd->sp);
          } else {  // pixels x channels -> channels x pixels
            transpose_tile(s + p * fs->sp, fs->sp, cols, rows, d + p, fd->sc);
          }
        }
      }
    });
  };
  if (dst.element_size() == 4) {
    run(static_cast<float*>(dst.data_ptr()), static_cast<const float*>(src.const_data_ptr()));
  } else {
    run(static_cast<uint16_t*>(dst.data_ptr()), static_cast<const uint16_t*>(src.const_data_ptr()));
  }
  return true;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pyframepred
