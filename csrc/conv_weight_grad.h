// The weight gradient of the ConvLSTM layer's stride-1 'same' convolutions (op
// conv2d_weight_grad, include/pyframepred/op_signatures.h): the argument check and ATen's
// implementation, which every device but the CPU uses and the CPU kernel falls back to for the
// cases it does not tile (csrc/cpu/conv_cpu.cpp). Defined once in conv_weight_grad.cpp, outside
// the per-ISA kernel sources.
#pragma once

#include <ATen/ATen.h>

#include "include/pyframepred/op_signatures.h"

namespace pyframepred {

// Checks shapes, dtypes and devices; returns nothing, raises with the operator's name.
void check_conv2d_weight_grad_args(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS);

// conv2d_same: the argument check, and ATen's convolution, which every device but the CPU uses
// and the CPU kernel falls back to outside its Winograd cases; contiguous in the input's memory
// format.
void check_conv2d_same_args(PYFRAMEPRED_CONV2D_SAME_PARAMS);
at::Tensor conv2d_same_aten(PYFRAMEPRED_CONV2D_SAME_PARAMS);

// ATen's convolution backward (oneDNN, cuDNN, ...), weight gradient only. Like the CPU kernel's,
// the result is contiguous in the input's memory format (channels_last or NCHW).
at::Tensor conv2d_weight_grad_aten(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS);

}  // namespace pyframepred
