// Per-element math of the fused gradient difference loss (GDL), shared by the CPU and CUDA kernels.
//
// For one pair of neighbouring pixels a -> b (vertical: (y-1, x) -> (y, x); horizontal:
// (y, x-1) -> (y, x)) with image gradients dt = t_b - t_a and dp = p_b - p_a the loss term is
//
//     term = | |dt| - |dp| |^alpha                    (Mathieu et al. 2015, eq. 4)
//
// i.e. the difference of the absolute gradients, not |dt - dp|. With d = |dt| - |dp| and
// f(d) = |d|^alpha, f'(d) = alpha * |d|^(alpha-1) * sign(d), and
//
//     d term / d dp = -f'(d) * sign(dp)      d term / d dt = f'(d) * sign(dt)
//
// with sign(0) = 0: a kink (d = 0, dp = 0 or dt = 0) has subgradient 0, as autograd gives for
// torch.abs. The coefficient c of a pair enters the gradient of p_b as +c and of p_a as -c; each
// pixel gathers the (up to four) pairs it belongs to, see gdl_gather.
//
// Every function is a template over the value type T: float or double here (host and device),
// at::vec::Vectorized<float/double> in the CPU kernels (csrc/cpu/gdl_cpu.cpp specialises GdlFn),
// so the CPU tests run exactly the expressions the GPU runs.
#pragma once

#include <type_traits>

#include "pf_math.h"

namespace pyframepred {

// alpha == 1 and alpha == 2 are compiled without pow.
enum class GdlPower : int { kGeneral = 0, kOne = 1, kTwo = 2 };

inline GdlPower gdl_power(double alpha) {
  return alpha == 1.0 ? GdlPower::kOne : (alpha == 2.0 ? GdlPower::kTwo : GdlPower::kGeneral);
}

template <GdlPower P>
using GdlPowerTag = std::integral_constant<GdlPower, P>;

// Host: calls f(GdlPowerTag<kP>{}) for the power alpha selects (kernels are templates over kP).
template <typename F>
inline void gdl_dispatch_power(double alpha, F&& f) {
  switch (gdl_power(alpha)) {
    case GdlPower::kOne:
      f(GdlPowerTag<GdlPower::kOne>{});
      break;
    case GdlPower::kTwo:
      f(GdlPowerTag<GdlPower::kTwo>{});
      break;
    default:
      f(GdlPowerTag<GdlPower::kGeneral>{});
      break;
  }
}

// sign (with sign(0) = 0 and NaN passed through, as torch.sign) and pow.
template <typename T>
struct GdlFn;

template <>
struct GdlFn<float> {
  static C10_HOST_DEVICE inline float sign(float x) {
    return x > 0.f ? 1.f : (x < 0.f ? -1.f : x);
  }
  static C10_HOST_DEVICE inline float pow(float x, float a) { return ::powf(x, a); }
};

template <>
struct GdlFn<double> {
  static C10_HOST_DEVICE inline double sign(double x) {
    return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : x);
  }
  static C10_HOST_DEVICE inline double pow(double x, double a) { return ::pow(x, a); }
};

// The loss term of one pair, from the target and prediction gradients dt and dp.
template <GdlPower kP, typename T>
C10_HOST_DEVICE inline T gdl_term(T dt, T dp, T alpha) {
  const T d = Fn<T>::abs(dt) - Fn<T>::abs(dp);
  if constexpr (kP == GdlPower::kOne) {
    return Fn<T>::abs(d);
  } else if constexpr (kP == GdlPower::kTwo) {
    return d * d;
  } else {
    return GdlFn<T>::pow(Fn<T>::abs(d), alpha);
  }
}

// f'(d) for f(d) = |d|^alpha (0 at d = 0 for every alpha >= 1).
template <GdlPower kP, typename T>
C10_HOST_DEVICE inline T gdl_dterm(T d, T alpha) {
  if constexpr (kP == GdlPower::kOne) {
    return GdlFn<T>::sign(d);
  } else if constexpr (kP == GdlPower::kTwo) {
    return d + d;
  } else {
    return alpha * GdlFn<T>::pow(Fn<T>::abs(d), alpha - T(1)) * GdlFn<T>::sign(d);
  }
}

// Gradient coefficients of one pair: cp = d term / d dp and, when kTarget, ct = d term / d dt.
template <GdlPower kP, bool kTarget, typename T>
C10_HOST_DEVICE inline void gdl_coef(T dt, T dp, T alpha, T& cp, T& ct) {
  const T g = gdl_dterm<kP>(Fn<T>::abs(dt) - Fn<T>::abs(dp), alpha);
  cp = (T(0) - g) * GdlFn<T>::sign(dp);
  if constexpr (kTarget) {
    ct = g * GdlFn<T>::sign(dt);
  }
}

// Gradient of one pixel from the coefficients of its pairs: `up` (pair with the pixel above,
// where it is the lower end), `down` (pair with the pixel below), `left` and `right`; a pair that
// does not exist (image border) has coefficient 0. `scale` is the incoming gradient of the
// pixel's image (divided by numel for reduction "mean").
template <typename T>
C10_HOST_DEVICE inline T gdl_gather(T up, T down, T left, T right, T scale) {
  return (((up - down) + left) - right) * scale;
}

}  // namespace pyframepred
