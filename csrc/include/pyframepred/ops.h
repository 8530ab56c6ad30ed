// pyframepred's operators for LibTorch (C++) users: the same ops, kernels and autograd as
// `pyframepred.ops` in Python, reached through the dispatcher. Link libpyframepred_ops (the
// CMake target `pyframepred::pyframepred_ops` after find_package(pyframepred), `pyframepred_ops`
// in the build tree); it registers the ops when it is loaded, so link it with
// -Wl,--no-as-needed (the CMake target does) or dlopen it before the first call.
//
// The argument lists are macros of op_signatures.h (shared with the operators' schemas); spelled
// out, each function below names its arguments in its comment. Optional tensors are
// std::optional<at::Tensor> defaulting to std::nullopt. Bad input raises c10::Error with a
// one-line message naming the argument.
//
// Dtypes: float32 or float64 throughout, or mixed precision -- float16/bfloat16 gates (the layer:
// x, the weights and h0) with a float32 cell state and float32 bias and peephole; h then comes
// back in the low dtype and c in float32. Under at::autocast (CPU bfloat16, CUDA
// bfloat16/float16) the ConvLSTM ops cast their arguments to that rule themselves. Backward
// passes are not differentiable again: a second derivative of convlstm_gates, convlstm_layer or
// gdl_loss raises when the second backward reaches them (use plain ATen for that).
//
//   #include <pyframepred/ops.h>
//   auto [h, c] = pyframepred::convlstm_gates(x_gates, h_gates, c_prev, bias);
//   at::Tensor loss = pyframepred::gdl_loss(pred, target, /*alpha=*/1.0, "mean");
//   loss.backward();   // gradients flow through both ops
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "op_signatures.h"  // the operators' schemas and C++ signatures

namespace pyframepred {

// Fused ConvLSTM cell update: convlstm_gates(x_gates, h_gates = nullopt, c_prev, bias = nullopt,
// peephole = nullopt) -> std::tuple<at::Tensor, at::Tensor> (h, c), both (N, C, H, W).
// x_gates, h_gates: (N, 4C, H, W) gate pre-activations in the order i, f, g, o (h_gates absent:
// zero hidden state); c_prev: (N, C, H, W); bias: (4C,); peephole: (3, C) per-channel weights (i
// and f see c_prev, o sees the new c). Any strides, NCHW or channels_last. Differentiable with
// respect to every tensor argument.
inline op::ConvLSTMGates::Result convlstm_gates(PYFRAMEPRED_CONVLSTM_GATES_INPUTS(= std::nullopt)) {
  return op::handle<op::ConvLSTMGates>().call(x_gates, h_gates, c_prev, bias, peephole);
}

// One ConvLSTM layer over a sequence: convlstm_layer(x, steps, weight_x, weight_h, bias = nullopt,
// peephole = nullopt, h0 = nullopt, c0 = nullopt) -> std::tuple of h_seq, h, c. Scheduled as
// cuDNN schedules LSTM layers (input convolution and every weight gradient batched over the
// steps). x: the sequence (T, N, C_in, H, W), T =
// steps, in any layout (a batch-first tensor as x.transpose(0, 1), no copy), or its frames
// (T*N, C_in, H, W) time-major; weight_x (4C, C_in, kh, kw), weight_h (4C, C, kh, kw), odd
// kernels of one size for both, 'same' padding; bias (4C,), peephole (3, C), h0 and c0
// (N, C, H, W) optional (absent: zeros). Returns h
// of every step -- (T, N, C, H, W) laid out as x for a sequence, (T*N, C, H, W) for frames -- and
// the last (h, c). Differentiable with respect to every tensor argument.
inline op::ConvLSTMLayer::Result convlstm_layer(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS(= std::nullopt)) {
  return op::handle<op::ConvLSTMLayer>().call(x, steps, weight_x, weight_h, bias, peephole, h0,
                                              c0);
}

// Weight gradient of a stride-1 'same' convolution with an odd kh x kw kernel: grad_out
// (B, C_out, H, W), input (B, C_in, H, W) -> (C_out, C_in, kh, kw), in the input's memory format.
// Differentiable with respect to both tensors, to any order (its derivatives are conv2d_same).
inline at::Tensor conv2d_weight_grad(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  return op::handle<op::Conv2dWeightGrad>().call(grad_out, input, kh, kw);
}

// Stride-1 'same' convolution with an odd kernel and no bias: input (B, C_in, H, W), weight
// (C_out, C_in, kh, kw) -> (B, C_out, H, W), in the input's memory format (on the CPU, 3x3
// convolutions in float32 run a Winograd F(4x4, 3x3) kernel, in bfloat16 at the avx512_bf16 level
// an F(2x2, 3x3) one). Differentiable with respect to input and weight, to any order (through
// conv2d_same with the flipped weight, and conv2d_weight_grad).
inline at::Tensor conv2d_same(PYFRAMEPRED_CONV2D_SAME_PARAMS) {
  return op::handle<op::Conv2dSame>().call(input, weight);
}

// Gradient difference loss (Mathieu et al. 2015), the difference of absolute image gradients
// over the last two dims of pred/target (..., H, W), same shape, dtype and device: per image,
//   sum over vertical and horizontal neighbour pairs of | |d target| - |d pred| |^alpha
// (d: the difference of the pair), alpha >= 1. reduction "mean" (the sum over all images divided
// by pred.numel()), "sum" (a 0-d tensor), or "none" (one value per image: shape
// pred.shape[:-2], e.g. (N, C) for NCHW images, 0-d for one (H, W) image). The loss has pred's
// dtype (float16/bfloat16 accumulated in float32). Differentiable with respect to pred and target.
inline at::Tensor gdl_loss(const at::Tensor& pred, const at::Tensor& target, double alpha = 1.0,
                           const std::string& reduction = "mean") {
  int64_t code = -1;
  if (reduction == "none") code = 0;
  if (reduction == "mean") code = 1;
  if (reduction == "sum") code = 2;
  TORCH_CHECK(code >= 0, "gdl_loss: reduction must be 'none', 'mean' or 'sum', got '", reduction,
              "'");
  return op::handle<op::GdlLossForward>().call(pred, target, alpha, code);
}

// The instruction-set level the CPU kernels run at: "default", "avx2", "avx512", "avx512_bf16" or "amx" -- the
// best one the CPU supports, chosen when the library loads, at most the one the environment variable
// PYFRAMEPRED_CPU_ISA names. cpu_isa_levels(): the levels compiled into the library.
inline std::string cpu_isa() { return op::handle<op::CpuIsa>().call(); }

inline std::vector<std::string> cpu_isa_levels() { return op::handle<op::CpuIsaLevels>().call(); }

// The CPU buffer pool of the fused cell's and layer's large buffers: bytes idle, in use, the peak
// in use, and the budget of idle bytes (-1: the peak, the default; PYFRAMEPRED_CPU_BUFFER_POOL_MB
// sets a fixed one). empty_cpu_buffer_pool() frees the idle blocks and resets the peak.
inline std::vector<int64_t> cpu_buffer_pool_stats() {
  return op::handle<op::CpuBufferPoolStats>().call();
}
inline void empty_cpu_buffer_pool() { op::handle<op::EmptyCpuBufferPool>().call(); }

}  // namespace pyframepred
