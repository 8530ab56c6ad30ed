// pyframepred's operators for LibTorch (C++) users: the same ops, kernels and autograd as
// `pyframepred.ops` in Python, reached through the dispatcher. Link libpyframepred_ops (the
// CMake target `pyframepred_ops`); it registers the ops when it is loaded, so link it with
// -Wl,--no-as-needed (the CMake target does) or dlopen it before the first call.
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

// Fused ConvLSTM cell update. x_gates, h_gates: (N, 4C, H, W) gate pre-activations in the order
// i, f, g, o (h_gates may be empty: zero hidden state); c_prev: (N, C, H, W); bias: (4C,);
// peephole: (3, C) per-channel weights (i and f see c_prev, o sees the new c). Returns (h, c).
inline op::ConvLSTMGates::Result convlstm_gates(PYFRAMEPRED_CONVLSTM_GATES_INPUTS(= std::nullopt)) {
  return op::handle<op::ConvLSTMGates>().call(x_gates, h_gates, c_prev, bias, peephole);
}

// One ConvLSTM layer over a sequence, scheduled as cuDNN schedules LSTM layers (input convolution
// and every weight gradient batched over the steps). x: the sequence (T, N, C_in, H, W), T =
// steps, in any layout (a batch-first tensor as x.transpose(0, 1), no copy), or its frames
// (T*N, C_in, H, W) time-major; weight_x (4C, C_in, kh, kw), weight_h (4C, C, kh, kw), odd
// kernels, 'same' padding; bias (4C,), peephole (3, C), h0 and c0 (N, C, H, W) optional. Returns h
// of every step -- (T, N, C, H, W) laid out as x for a sequence, (T*N, C, H, W) for frames -- and
// the last (h, c). Differentiable with respect to every tensor argument.
inline op::ConvLSTMLayer::Result convlstm_layer(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS(= std::nullopt)) {
  return op::handle<op::ConvLSTMLayer>().call(x, steps, weight_x, weight_h, bias, peephole, h0,
                                              c0);
}

// Weight gradient of a stride-1 'same' convolution with an odd kh x kw kernel: grad_out
// (B, C_out, H, W), input (B, C_in, H, W) -> (C_out, C_in, kh, kw), in the input's memory format.
inline at::Tensor conv2d_weight_grad(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  return op::handle<op::Conv2dWeightGrad>().call(grad_out, input, kh, kw);
}

// Stride-1 'same' convolution with an odd kernel and no bias: input (B, C_in, H, W), weight
// (C_out, C_in, kh, kw) -> (B, C_out, H, W), in the input's memory format (on the CPU, 3x3
// convolutions in float32 run a Winograd F(4x4, 3x3) kernel, in bfloat16 at the avx512_bf16 level
// an F(2x2, 3x3) one). Not differentiable.
inline at::Tensor conv2d_same(PYFRAMEPRED_CONV2D_SAME_PARAMS) {
  return op::handle<op::Conv2dSame>().call(input, weight);
}

// Gradient difference loss (Mathieu et al. 2015), the difference of absolute image gradients
// over the last two dims of pred/target (..., H, W); alpha >= 1; reduction "mean" (sum divided by
// pred.numel()), "sum" or "none" (one value per image).
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
