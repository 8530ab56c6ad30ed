// Scalar/SIMD-generic elementary functions shared by the CPU and CUDA kernels.
//
// Every per-element expression of the fused ops is written once, as a template over the value
// type T, and calls exp/tanh through Fn<T>. Fn is specialised here for float and double (host and
// device) and, in the CPU kernels, for at::vec::Vectorized — so the CPU tests run exactly the
// expressions the GPU runs.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace pyframepred {

template <typename T>
struct Fn;

template <>
struct Fn<float> {
  static C10_HOST_DEVICE inline float exp(float x) { return ::expf(x); }
  static C10_HOST_DEVICE inline float tanh(float x) { return ::tanhf(x); }
  static C10_HOST_DEVICE inline float abs(float x) { return ::fabsf(x); }
  static C10_HOST_DEVICE inline float recip(float x) { return 1.0f / x; }
};

template <>
struct Fn<double> {
  static C10_HOST_DEVICE inline double exp(double x) { return ::exp(x); }
  static C10_HOST_DEVICE inline double tanh(double x) { return ::tanh(x); }
  static C10_HOST_DEVICE inline double abs(double x) { return ::fabs(x); }
  static C10_HOST_DEVICE inline double recip(double x) { return 1.0 / x; }
};

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T x) {
  // 1 / (1 + e^-x): for x -> -inf e^-x -> inf and the result -> 0, no NaN.
  // Fn<T>::recip: 1 / d for the d >= 1 (or inf, or NaN) that sigmoid and tanh divide by.
  return Fn<T>::recip(T(1) + Fn<T>::exp(T(0) - x));
}

}  // namespace pyframepred
