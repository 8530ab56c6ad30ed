// The ConvLSTM layer operator (csrc/convlstm_layer.cpp): one layer over a whole sequence.
#pragma once

#include <ATen/ATen.h>

#include "include/pyframepred/op_signatures.h"

namespace pyframepred {

// x: the sequence (T, N, C_in, H, W), T = `steps`, in any layout, or its frames time-major
// (T*N, C_in, H, W); weight_x: (4C, C_in, kh, kw) and weight_h: (4C, C, kh, kw), odd kernels of
// one size with 'same' padding, no convolution bias; bias (4C,) and peephole (3, C) as in
// convlstm_gates; h0, c0: (N, C, H, W) or absent (zeros). Returns h of every step in x's form
// ((T, N, C, H, W) or (T*N, C, H, W)), and the last step's h and c.
op::ConvLSTMLayer::Sig convlstm_layer_forward;

}  // namespace pyframepred
