// CPU helpers: Fn<> for at::vec::Vectorized, and strided load/store of a row of values converted
// to the accumulation type (float for half/bfloat16, the type itself otherwise).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

#include "pf_math.h"

namespace pyframepred {

template <>
struct Fn<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  // e^x = 2^n e^r, n = round(x / ln 2), |r| <= ln 2 / 2 (x - n ln 2 in two parts, the first
  // exact), e^r by Cephes' degree-7 polynomial (about 1 ulp), 2^n applied by VSCALEFPS, which
  // gives inf and 0 (through the subnormals) past the float range and keeps NaN: 15
  // instructions where exp_u20 with its clamps and NaN blend took ~25, in a cell forward bound
  // by its five exponentials per cell (2 Xeon cores, processes alternated: the fused cell's
  // forward 1.05-1.12x faster, forward + backward 0.99-1.05x). x is first clamped to
  // [-1000, 1000], so that +-inf do not make r = inf - inf; min and max give their second
  // operand where either is NaN, so a NaN stays NaN.
  static inline V exp(V v) {
    __m512 x = _mm512_min_ps(_mm512_set1_ps(1000.0f), v);
    x = _mm512_max_ps(_mm512_set1_ps(-1000.0f), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
  }
#else
  // exp_u20: within 20 ulp (~1e-6 relative), about twice as fast as the 1-ulp exp.
  // exp_u20's bit tricks would turn a NaN into a number: pass NaNs through explicitly.
  static inline V exp(V x) { return V::blendv(x.exp_u20(), x, x.isnan()); }
#endif
  // tanh(x), as an odd function: computed on a = |x|, then given x's sign (so -0 stays -0, and
  // both signs get the same accuracy). For a >= 0.4 as 1 - 2 / (1 + e^2a): one exp and one
  // division, cheaper than Sleef's tanh, with an error that is absolute (a few ulps of 1), fine
  // there. Not below: the difference cancels. On x itself (before 2026-12-07) that formula made
  // tanh(1e-4) ~1e-3 off, relative (tanh(1e-5) 2e-2 at the avx2 level, whose exp is within 20
  // ulp), gave 0 below ~3e-8 and negative arguments twice the error of positive ones -- small cell
  // states and g gates, which float32 gradients then carried at 1e-4 relative errors. Below 0.4,
  // the odd Taylor polynomial to x^13 (the first term left out is ~0.05 ulp there). NaN stays NaN,
  // +-inf give +-1 exactly.
  static inline V tanh(V x) {
    const V a = x.abs();
    const V far = tanh_absolute(a);
    const V a2 = a * a;
    V p = at::vec::fmadd(a2, V(21844.0f / 6081075.0f), V(-1382.0f / 155925.0f));
    p = at::vec::fmadd(a2, p, V(62.0f / 2835.0f));
    p = at::vec::fmadd(a2, p, V(-17.0f / 315.0f));
    p = at::vec::fmadd(a2, p, V(2.0f / 15.0f));
    p = at::vec::fmadd(a2, p, V(-1.0f / 3.0f));
    const V near = at::vec::fmadd(a * a2, p, a);
#if defined(CPU_CAPABILITY_AVX512)
    const __mmask16 small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.4f), _CMP_LT_OQ);
    const V t = _mm512_mask_mov_ps(far, small, near);
#else
    const V t = V::blendv(far, near, a < V(0.4f));
#endif
    return t | (x & V(-0.0f));  // t >= 0 (or NaN): x's sign bit
  }
  // The one-exp formula alone, 1 - 2 / (1 + e^2x): within a few ulps of 1, absolute.
  static inline V tanh_absolute(V x) {
    const V one(1.0f), two(2.0f);
    return one - two * recip(one + exp(x + x));
  }
  static inline V abs(V x) { return x.abs(); }
  // 1 / d for d >= 1, inf (giving 0) or NaN: the hardware's reciprocal estimate refined by one
  // Newton step, r (2 - d r), within about 2 float ulps -- the divider's throughput (one
  // division per sigmoid or tanh, five per vector of cells in the forward) bounded the fused
  // cell: 2.0 -> 1.7 ns per cell forward on the same shape and machine. The estimate of inf is 0, but inf * 0 in the Newton step is NaN, hence the
  // mask. Levels without a reciprocal estimate divide.
  static inline V recip(V d) {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 r = _mm512_rcp14_ps(d);  // relative error < 2^-14
    const __mmask16 finite = _mm512_cmp_ps_mask(d, _mm512_set1_ps(INFINITY), _CMP_NEQ_UQ);
    return _mm512_maskz_mul_ps(finite, r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
#elif defined(CPU_CAPABILITY_AVX2)
    const __m256 r = _mm256_rcp_ps(d);  // relative error < 1.5 * 2^-12
    const __m256 finite = _mm256_cmp_ps(d, _mm256_set1_ps(INFINITY), _CMP_NEQ_UQ);
    return _mm256_and_ps(finite, _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f))));
#else
    return V(1.0f) / d;
#endif
  }
};

// The math of the CPU cell kernels whose gates come in bfloat16 or float16 (unit roundoff 2^-8
// and 2^-11): a cheaper tanh, the one-exp formula where its absolute error (~1e-7, a few times
// that at the avx2 level) is small against tanh, and tanh(x) = x below |x| = 2^-7 (relative error
// x^2 / 3 <= 2e-5): within ~1e-4 relative everywhere, below those types' rounding, also for the
// float32 cell state their gates update. The float32 tanh's polynomial cost the bf16 cell forward
// 5-15% (2 Xeon cores, processes alternated).
// (A template over the vector type, as Fn: each ISA level's copy is a type of its own.)
template <typename V>
struct FnGates16 : Fn<V> {
  static inline V tanh(V x) {
    return V::blendv(Fn<V>::tanh_absolute(x), x, x.abs() < V(0.0078125f));
  }
};

template <>
struct Fn<at::vec::Vectorized<double>> {
  using V = at::vec::Vectorized<double>;
  static inline V exp(V x) { return x.exp(); }
  static inline V tanh(V x) { return x.tanh(); }
  static inline V abs(V x) { return x.abs(); }
  static inline V recip(V d) { return V(1.0) / d; }
};

namespace cpu {
namespace CPU_CAPABILITY {  // one copy per ISA level (cpu/kernels.h)

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
using VecAcc = at::vec::Vectorized<acc_t<scalar_t>>;

// The strided / converting / partial cases of load() and store(), kept out of line so that the
// common case below inlines into the kernels' inner loops.
template <typename scalar_t>
C10_NOINLINE VecAcc<scalar_t> load_slow(const scalar_t* p, int64_t s, int64_t count) {
  using A = acc_t<scalar_t>;
  using V = VecAcc<scalar_t>;
  alignas(64) A buf[V::size()];
  for (int64_t k = 0; k < V::size(); ++k) {
    buf[k] = k < count ? static_cast<A>(p[k * s]) : A(0);
  }
  return V::loadu(buf);
}

template <typename scalar_t>
C10_NOINLINE void store_slow(scalar_t* p, int64_t s, const VecAcc<scalar_t>& v, int64_t count) {
  using A = acc_t<scalar_t>;
  alignas(64) A buf[VecAcc<scalar_t>::size()];
  v.store(buf);
  for (int64_t k = 0; k < count; ++k) {
    p[k * s] = static_cast<scalar_t>(buf[k]);
  }
}

template <typename scalar_t>
constexpr bool kReduced = std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>;

// A whole vector of unit-stride values, widened to float for float16/bfloat16; and its store.
template <typename scalar_t>
C10_ALWAYS_INLINE VecAcc<scalar_t> load_vec(const scalar_t* p) {
  if constexpr (kReduced<scalar_t>) {
    VecAcc<scalar_t> out;
    at::vec::load_to_float<scalar_t>(p, out);
    return out;
  } else {
    return VecAcc<scalar_t>::loadu(p);
  }
}

//
// On AVX-512 one float vector narrows to one 256-bit store: bfloat16 by vcvtneps2bf16 where the
// level has AVX512-BF16 (amx), by ATen's one-vector rounding otherwise, float16 by vcvtps2ph
// (at::vec's convert_from_float narrows two vectors, here the same one twice, then stores half).
template <typename scalar_t>
C10_ALWAYS_INLINE void store_vec(scalar_t* p, const VecAcc<scalar_t>& v) {
  if constexpr (kReduced<scalar_t>) {
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
    __m256i narrow;
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
#if defined(__AVX512BF16__)
      narrow = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
#else
      narrow = at::vec::cvtfp32_bf16(v);
#endif
    } else {
      narrow = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow);
#else
    at::vec::convert_from_float<scalar_t>(v, v).store(p, VecAcc<scalar_t>::size());
#endif
  } else {
    v.store(p);
  }
}

// Loads `count` (1..size) values p[0], p[s], p[2s], ...; lanes past `count` are zero.
// Unit stride is a plain vector load (widened to float for float16/bfloat16), stride 0 a
// broadcast.
template <typename scalar_t>
C10_ALWAYS_INLINE VecAcc<scalar_t> load(const scalar_t* p, int64_t s, int64_t count) {
  using A = acc_t<scalar_t>;
  using V = VecAcc<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, A> || kReduced<scalar_t>) {
    if (s == 1 && count == V::size()) return load_vec(p);
  }
  if (s == 0) {
    return V(static_cast<A>(p[0]));
  }
  return load_slow(p, s, count);
}

template <typename scalar_t>
C10_ALWAYS_INLINE void store(scalar_t* p, int64_t s, const VecAcc<scalar_t>& v, int64_t count) {
  using A = acc_t<scalar_t>;
  using V = VecAcc<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, A> || kReduced<scalar_t>) {
    if (s == 1 && count == V::size()) {
      store_vec(p, v);
      return;
    }
  }
  store_slow(p, s, v, count);
}

// Rows of the dense kind (see load_row): every operand unit-stride along the row or constant
// (stride 0), every result unit-stride, the row a whole number of vectors.
//
// load_row / store_row: load() / store() for a kernel instantiated for one kind of row. Dense
// rows compile to plain vector loads and stores (or a broadcast) with no tail or stride cases,
// so nothing calls the out-of-line slow paths -- whose by-reference arguments would otherwise
// keep the gate vectors in stack memory (fused cell, (8, 4*32, 32, 32) channels_last float32 on 2
// AVX-512 Xeon cores: forward 2.3 -> 2.0 ns per cell, backward 1.4 -> 1.1).
template <bool kDense, typename scalar_t>
C10_ALWAYS_INLINE VecAcc<scalar_t> load_row(const scalar_t* p, int64_t s, int64_t count) {
  if constexpr (kDense) {
    return s == 0 ? VecAcc<scalar_t>(static_cast<acc_t<scalar_t>>(p[0])) : load_vec(p);
  } else {
    return load(p, s, count);
  }
}

template <bool kDense, typename scalar_t>
C10_ALWAYS_INLINE void store_row(scalar_t* p, int64_t s, const VecAcc<scalar_t>& v, int64_t count) {
  if constexpr (kDense) {
    store_vec(p, v);
  } else {
    store(p, s, v, count);
  }
}

// Zeroes the lanes at and past `count` (so padded lanes never enter a reduction).
template <typename V>
C10_ALWAYS_INLINE V head(const V& v, int64_t count) {
  return count == V::size() ? v : V::set(V(0), v, count);
}

template <typename V>
inline typename V::value_type hsum(const V& v) {
  alignas(64) typename V::value_type buf[V::size()];
  v.store(buf);
  typename V::value_type s = 0;
  for (int64_t k = 0; k < V::size(); ++k) s += buf[k];
  return s;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pyframepred
