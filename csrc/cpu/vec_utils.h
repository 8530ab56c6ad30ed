// CPU helpers: Fn<> for at::vec::Vectorized, and strided load/store of a row of values converted
// to the accumulation type (float for half/bfloat16, the type itself otherwise).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "pf_math.h"

namespace pyframepred {

template <>
struct Fn<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
  // exp_u20: within 20 ulp (~1e-6 relative), about twice as fast as the 1-ulp exp.
  // exp_u20's bit tricks would turn a NaN into a number: pass NaNs through explicitly.
  static inline V exp(V x) { return V::blendv(x.exp_u20(), x, x.isnan()); }
  // tanh(x) = 1 - 2 / (1 + e^2x): one exp and one division, cheaper than Sleef's tanh; the
  // absolute error stays within a few float ulps of 1 (what matters next to sigmoid/exp terms),
  // and the limits are exact (e^2x = inf gives 1, e^2x = 0 gives -1).
  static inline V tanh(V x) {
    const V one(1.0f), two(2.0f);
    return one - two / (one + exp(x + x));
  }
  static inline V abs(V x) { return x.abs(); }
};

template <>
struct Fn<at::vec::Vectorized<double>> {
  using V = at::vec::Vectorized<double>;
  static inline V exp(V x) { return x.exp(); }
  static inline V tanh(V x) { return x.tanh(); }
  static inline V abs(V x) { return x.abs(); }
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

// Loads `count` (1..size) values p[0], p[s], p[2s], ...; lanes past `count` are zero.
// Unit stride is a plain vector load (widened to float for float16/bfloat16), stride 0 a
// broadcast.
template <typename scalar_t>
C10_ALWAYS_INLINE VecAcc<scalar_t> load(const scalar_t* p, int64_t s, int64_t count) {
  using A = acc_t<scalar_t>;
  using V = VecAcc<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, A>) {
    if (s == 1 && count == V::size()) {
      return V::loadu(p);
    }
  } else if constexpr (kReduced<scalar_t>) {
    if (s == 1 && count == V::size()) {
      V out;
      at::vec::load_to_float<scalar_t>(p, out);
      return out;
    }
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
  if constexpr (std::is_same_v<scalar_t, A>) {
    if (s == 1 && count == V::size()) {
      v.store(p);
      return;
    }
  } else if constexpr (kReduced<scalar_t>) {
    if (s == 1 && count == V::size()) {
      at::vec::convert_from_float<scalar_t>(v, v).store(p, V::size());
      return;
    }
  }
  store_slow(p, s, v, count);
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
