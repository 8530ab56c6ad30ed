// Per-element math of the fused ConvLSTM cell, shared by the CPU and CUDA kernels.
//
// Gate pre-activations come in the order i, f, g, o (as torch.nn.LSTMCell). With the optional
// peephole weights w (Shi et al. 2015, one weight per channel), i and f see c_prev and o sees the
// new c:
//   i = sigmoid(gi + wci*c_prev)   f = sigmoid(gf + wcf*c_prev)   g = tanh(gg)
//   c = f*c_prev + i*g             o = sigmoid(go + wco*c)        h = o*tanh(c)
// The backward pass saves only the activated gates (i, f, g, o) and c_prev; c and tanh(c) are
// recomputed. M::tanh: Fn<T>::tanh unless a kernel picks another (the CPU kernels of 16-bit
// gates: a cheaper one, cpu/vec_utils.h); sigmoid is always Fn<T>'s.
#pragma once

#include "pf_math.h"

namespace pyframepred {

template <typename T, bool kPeephole, typename M = Fn<T>>
C10_HOST_DEVICE inline void convlstm_cell_forward(
    T gi, T gf, T gg, T go, T c_prev, T wci, T wcf, T wco,
    T& i, T& f, T& g, T& o, T& c, T& h) {
  if constexpr (kPeephole) {
    gi = gi + wci * c_prev;
    gf = gf + wcf * c_prev;
  }
  i = sigmoid(gi);
  f = sigmoid(gf);
  g = M::tanh(gg);
  c = f * c_prev + i * g;
  if constexpr (kPeephole) {
    go = go + wco * c;
  }
  o = sigmoid(go);
  h = o * M::tanh(c);
}

// Gradients with respect to the four gate pre-activations and c_prev, given the activated gates,
// c_prev and the incoming gradients dh (of h) and dc (of c). Also returns the recomputed c, which
// the peephole-weight gradient of wco needs.
template <typename T, bool kPeephole, typename M = Fn<T>>
C10_HOST_DEVICE inline void convlstm_cell_backward(
    T i, T f, T g, T o, T c_prev, T dh, T dc, T wci, T wcf, T wco,
    T& di, T& df, T& dg, T& do_, T& dc_prev, T& c) {
  c = f * c_prev + i * g;
  const T tc = M::tanh(c);
  do_ = dh * tc * o * (T(1) - o);
  T dct = dc + dh * o * (T(1) - tc * tc);
  if constexpr (kPeephole) {
    dct = dct + do_ * wco;
  }
  di = dct * g * i * (T(1) - i);
  df = dct * c_prev * f * (T(1) - f);
  dg = dct * i * (T(1) - g * g);
  dc_prev = dct * f;
  if constexpr (kPeephole) {
    dc_prev = dc_prev + di * wci + df * wcf;
  }
}

}  // namespace pyframepred
