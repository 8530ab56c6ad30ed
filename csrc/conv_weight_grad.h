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

// t (B, C, H, W) as NHWC (B, H, W, C) memory: a view of a channels_last tensor, a copy of others.
// Out of line, in the portable objects: an ATen inline function instantiated in a kernel source
// would be compiled for that source's ISA level (see scripts/check_cpu_isa.py).
at::Tensor nhwc(const at::Tensor& t);

// The argument check of PreparedConv::run (of a weight transformed for inputs of `dtype`, u of
// shape (tile points, C_in, C_out): 36 for float32's F(4x4, 3x3), 16 for F(2x2, 3x3)): input (B, C_in, H, W) of that dtype, addend (where defined) of the
// result's shape and dtype; raises in one line. Out of line, as nhwc (TORCH_CHECK's message
// formatting is inline template code).
void check_prepared_conv_args(const at::Tensor& input, const at::Tensor& u, at::ScalarType dtype,
                              const at::Tensor& addend);

// Zeros for a kernel's scratch accumulators (e.g. the weight gradients' per-thread partial sums),
// from the fused cell's buffer pool where they are large (buffer_pool.h): called at every step of
// the layer's backward, they would otherwise fault in fresh pages. Out of line, as nhwc.
at::Tensor scratch_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);

// A weight of conv2d_same prepared once for the many calls of the ConvLSTM layer's steps
// (convlstm_layer.cpp): on the CPU the Winograd transform of a 3x3 weight (csrc/cpu/conv_cpu.cpp),
// in the layout of the ISA level that made it, with that level's kernel to run it. Empty (`run`
// null) where there is no such form -- other devices, kernel sizes, dtypes, channel counts --
// and the layer calls the operator instead. Not an operator: `run` may write into a tensor the
// caller owns, which an operator's result may not alias.
struct PreparedConv {
  at::Tensor u;
  // conv2d_same(input, weight) + addend (where defined), written into `out` where defined (the
  // result is then `out`), else into a new tensor; input, addend and out in the weight's dtype.
  at::Tensor (*run)(const at::Tensor& input, const at::Tensor& u, const at::Tensor& addend,
                    const at::Tensor& out) = nullptr;
};

// Prepares `weight` for inputs of dtype `dtype`. Registered per device type (the CPU's by
// cpu/dispatch.cpp, at the ISA level in use); null where none is.
using PrepareConvSame = PreparedConv(const at::Tensor& weight, at::ScalarType dtype);

inline PrepareConvSame*& prepare_conv_same(c10::DeviceType device) {
  static PrepareConvSame* kernels[static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)] = {};
  return kernels[static_cast<int>(device)];
}

// conv2d_weight_grad summed over calls in float32 and rounded once: the ConvLSTM layer's weight
// gradients over the chunks of its backward sweep, without a zeroing of the kernel's partial sums,
// a finishing pass and an addition of the results per chunk (at 4x64x[64]@64 in bfloat16, ten of
// each per training step), and more exact than adding rounded results. `add` adds the products of
// one call into `sum`, the kernel's partial sums (an undefined one: allocated, by the first call);
// it returns false, having done nothing, where the kernel does not take the tensors (the caller
// then adds the operator's results). A defined `sum` laid out for more input channels than
// `input` has takes `input` as their first channels, the others zero (adding nothing). `finish`
// gives the sum as the operator gives a gradient: (Co, Ci, kh, kw) in the dtype and memory format
// of `input`, one of the inputs summed.
// Registered per device type (the CPU's: bfloat16 at the amx level, and at avx512_bf16 where
// the operator runs no Winograd kernel for the shape, cpu/dispatch.cpp); null where none is.
using WeightGradSumAdd = bool(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh,
                              int64_t kw, at::Tensor& sum);
using WeightGradSumFinish = at::Tensor(const at::Tensor& sum, int64_t kh, int64_t kw,
                                       const at::Tensor& input);
struct WeightGradSum {
  WeightGradSumAdd* add = nullptr;
  WeightGradSumFinish* finish = nullptr;
};

inline WeightGradSum& weight_grad_sum(c10::DeviceType device) {
  static WeightGradSum kernels[static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)] = {};
  return kernels[static_cast<int>(device)];
}

}  // namespace pyframepred
