// pyframepred's operators, each declared once: its schema and its C++ signature.
//
// Everything else that names an operator's signature reuses what is declared here:
//   - csrc/ops.cpp registers the schemas (TORCH_LIBRARY), the CPU execution model of the CUDA
//     kernels (csrc/cuda/emu/emu_ops.cpp) registers its test entry points with the same arguments;
//   - the kernels (csrc/cpu, csrc/cuda, csrc/cuda/emu), the autograd and autocast kernels and the
//     ConvLSTM layer are defined with the parameter lists below (PYFRAMEPRED_*_PARAMS) and
//     registered under kName;
//   - the CPU kernel tables (csrc/cpu/kernels.h) hold pointers of type Op::Sig;
//   - C++ code that calls an operator (the autograd and autocast kernels, the layer, the public
//     <pyframepred/ops.h>) goes through op::handle<Op>().
// The schema (kArgs, kReturns) and the C++ type (Sig) are the two languages of one declaration;
// the dispatcher compares every registered kernel's C++ type with the schema when the library
// loads, so they cannot drift apart unnoticed. An operator whose schema changes gets a new name:
// torch.compile's on-disk caches (AOTAutograd's, Inductor's) know an operator by its name, not its
// schema, and would run code compiled for the old one (seen with convlstm_layer_train's results
// while it was written).
//
// This header is installed with <pyframepred/ops.h> and needs nothing but ATen.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

// C++ parameter lists of the operators, in schema order and with the schema's names. Where a
// macro takes OPT it is appended to the trailing optional tensors: empty for kernels,
// `= std::nullopt` for a wrapper with default arguments.

// convlstm_gates_forward without save_gates: the cell's inputs.
#define PYFRAMEPRED_CONVLSTM_GATES_INPUTS(OPT)                                                 \
  const at::Tensor& x_gates, const std::optional<at::Tensor>& h_gates, const at::Tensor& c_prev, \
      const std::optional<at::Tensor>& bias OPT, const std::optional<at::Tensor>& peephole OPT
#define PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS \
  PYFRAMEPRED_CONVLSTM_GATES_INPUTS(), bool save_gates
#define PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS                                              \
  const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,                  \
      const at::Tensor& c_prev, const std::optional<at::Tensor>& peephole, bool param_grads
#define PYFRAMEPRED_CONVLSTM_LAYER_PARAMS(OPT)                                                 \
  const at::Tensor& x, int64_t steps, const at::Tensor& weight_x, const at::Tensor& weight_h,   \
      const std::optional<at::Tensor>& bias OPT, const std::optional<at::Tensor>& peephole OPT, \
      const std::optional<at::Tensor>& h0 OPT, const std::optional<at::Tensor>& c0 OPT
#define PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS \
  const at::Tensor& grad_out, const at::Tensor& input, int64_t kh, int64_t kw
#define PYFRAMEPRED_CONV2D_SAME_PARAMS const at::Tensor& input, const at::Tensor& weight
#define PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS \
  const at::Tensor& pred, const at::Tensor& target, double alpha, int64_t reduction
#define PYFRAMEPRED_GDL_LOSS_BACKWARD_PARAMS                                           \
  const at::Tensor& grad_out, const at::Tensor& pred, const at::Tensor& target, double alpha, \
      int64_t reduction, bool target_grad

namespace pyframepred {
namespace op {

// Fused ConvLSTM cell. x_gates/h_gates: (N, 4C, H, W) pre-activations in gate order i, f, g, o;
// c_prev: (N, C, H, W); bias: (4C,); peephole: (3, C) weights of i, f (on c_prev) and o (on c).
// Returns h, c and, when save_gates, the activated gates (N, 4C, H, W) that backward needs
// (an empty tensor otherwise).
struct ConvLSTMGatesForward {
  static constexpr const char* kName = "convlstm_gates_forward";
  static constexpr const char* kArgs =
      "(Tensor x_gates, Tensor? h_gates, Tensor c_prev, Tensor? bias, Tensor? peephole, "
      "bool save_gates)";
  static constexpr const char* kReturns = "(Tensor h, Tensor c, Tensor gates)";
  using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  using Sig = Result(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS);
};

// The fused cell as callers use it (pyframepred.ops.convlstm_gates in Python, convlstm_gates of
// <pyframepred/ops.h> in C++): convlstm_gates_forward, keeping the activated gates for backward
// exactly when a gradient can be asked for (grad mode on and an input that requires grad). The one
// place that decides save_gates: a CompositeImplicitAutograd kernel (csrc/convlstm_autograd.cpp).
struct ConvLSTMGates {
  static constexpr const char* kName = "convlstm_gates";
  static constexpr const char* kArgs =
      "(Tensor x_gates, Tensor? h_gates, Tensor c_prev, Tensor? bias=None, Tensor? peephole=None)";
  static constexpr const char* kReturns = "(Tensor h, Tensor c)";
  using Result = std::tuple<at::Tensor, at::Tensor>;
  using Sig = Result(PYFRAMEPRED_CONVLSTM_GATES_INPUTS());
};

// Backward of convlstm_gates_forward. Returns the gradient of the gate pre-activations (shared by
// x_gates and h_gates), of c_prev, and, when param_grads, grad_params (7, C): rows 0-3 the bias
// gradient (reshape to (4C,)), rows 4-6 the peephole gradient (empty when not param_grads).
struct ConvLSTMGatesBackward {
  static constexpr const char* kName = "convlstm_gates_backward";
  static constexpr const char* kArgs =
      "(Tensor grad_h, Tensor grad_c, Tensor gates, Tensor c_prev, Tensor? peephole, "
      "bool param_grads)";
  static constexpr const char* kReturns =
      "(Tensor grad_gates, Tensor grad_c_prev, Tensor grad_params)";
  using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  using Sig = Result(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS);
};

// One ConvLSTM layer over a sequence (csrc/convlstm_layer.cpp): x is the sequence (T, N, C_in,
// H, W), T = steps, in any layout (e.g. a batch-first tensor transposed), or its frames
// (T*N, C_in, H, W) time-major; weight_x (4C, C_in, kh, kw), weight_h (4C, C, kh, kw), odd
// kernels, 'same' padding; bias, peephole as above; h0, c0 (N, C, H, W) or zeros. Returns h of
// every step -- (T, N, C, H, W) laid out as x (batch-major in memory, channels_last frames, where
// x is so) for a sequence, (T*N, C, H, W) for frames -- and the last h and c. Input convolutions
// are batched over the steps, and so are the weight gradients in backward.
struct ConvLSTMLayer {
  static constexpr const char* kName = "convlstm_layer";
  static constexpr const char* kArgs =
      "(Tensor x, int steps, Tensor weight_x, Tensor weight_h, Tensor? bias, Tensor? peephole, "
      "Tensor? h0, Tensor? c0)";
  static constexpr const char* kReturns = "(Tensor h_seq, Tensor h_last, Tensor c_last)";
  using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  using Sig = Result(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS());
};

// convlstm_layer for a training step whose autograd is registered outside C++ (torch.compile:
// pyframepred/ops/_layer.py registers it in Python, so that AOTAutograd keeps the layer one node of
// the forward graph and its backward one node of the backward graph, instead of tracing the C++
// autograd into its steps). The same results, and what backward reads besides the arguments:
// h_prev, the h of steps 0 .. T-2 (the hidden convolution's inputs of steps 1 .. T-1) as time-major
// frames ((T-1)*N, C, H, W) of their own -- not the output's memory, which a caller may change in
// place before backward (autograd's version check, which catches that in eager mode, does not
// reach into a compiled graph) --, the activated gates of every step (T tensors (N, 4C, H, W))
// and the cell states c_1 .. c_{T-1} that steps 1 .. T-1 started from (T - 1 tensors
// (N, C, H, W)), all in the layout the layer runs in. No autograd of its own in C++: LibTorch
// callers train through convlstm_layer.
struct ConvLSTMLayerTrain {
  static constexpr const char* kName = "convlstm_layer_train";
  static constexpr const char* kArgs = ConvLSTMLayer::kArgs;
  static constexpr const char* kReturns =
      "(Tensor h_seq, Tensor h_last, Tensor c_last, Tensor h_prev, Tensor[] gates, Tensor[] cells)";
  using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>,
                            std::vector<at::Tensor>>;
  using Sig = Result(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS());
};

#define PYFRAMEPRED_CONVLSTM_LAYER_BACKWARD_PARAMS                                               \
  const std::optional<at::Tensor>& grad_h_seq, const std::optional<at::Tensor>& grad_h_last,     \
      const std::optional<at::Tensor>& grad_c_last, PYFRAMEPRED_CONVLSTM_LAYER_PARAMS(),        \
      const at::Tensor& h_prev, at::TensorList gates, at::TensorList cells,                     \
      std::array<bool, 7> output_mask
// Backward of convlstm_layer_train: the incoming gradients (absent: zeros), the call's arguments,
// its h_prev, gates and cells. Returns the gradients of the arguments output_mask names, in order
// (x, weight_x, weight_h, bias, peephole, h0, c0), each in the argument's dtype; x's as time-major
// frames in the layer's layout (a sequence's unflattened to (T, N, ...)), h0's and c0's in that
// layout, the weights' in their own memory format.
struct ConvLSTMLayerBackward {
  static constexpr const char* kName = "convlstm_layer_backward";
  static constexpr const char* kArgs =
      "(Tensor? grad_h_seq, Tensor? grad_h_last, Tensor? grad_c_last, Tensor x, int steps, "
      "Tensor weight_x, Tensor weight_h, Tensor? bias, Tensor? peephole, Tensor? h0, Tensor? c0, "
      "Tensor h_prev, Tensor[] gates, Tensor[] cells, bool[7] output_mask)";
  static constexpr const char* kReturns = "Tensor[]";
  using Result = std::vector<at::Tensor>;
  using Sig = Result(PYFRAMEPRED_CONVLSTM_LAYER_BACKWARD_PARAMS);
};

// Weight gradient of a stride-1, 'same'-padded 2-d convolution with an odd kh x kw kernel, no
// dilation, no groups: grad_out (B, C_out, H, W), input (B, C_in, H, W); returns
// (C_out, C_in, kh, kw). The ConvLSTM layer's backward computes its batched weight gradients
// with it; the CPU kernel (csrc/cpu/conv_cpu.cpp) is a register-tiled implicit GEMM over the
// positions, the other devices use ATen's convolution backward.
struct Conv2dWeightGrad {
  static constexpr const char* kName = "conv2d_weight_grad";
  static constexpr const char* kArgs = "(Tensor grad_out, Tensor input, int kh, int kw)";
  static constexpr const char* kReturns = "Tensor";
  using Result = at::Tensor;
  using Sig = Result(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS);
};

// A stride-1, 'same'-padded 2-d convolution with an odd kernel, no bias, dilation or groups:
// input (B, C_in, H, W), weight (C_out, C_in, kh, kw) -> (B, C_out, H, W), in the input's memory
// format. The ConvLSTM layer's convolutions on the CPU (forward, and its data gradients as
// convolutions with the flipped, transposed weight): 3x3 ones in float32, and in bfloat16 at the
// avx512_bf16 level, are Winograd kernels of ours (F(4x4, 3x3) in float32, F(2x2, 3x3) in
// bfloat16; csrc/cpu/conv_cpu.cpp); everything else is ATen's convolution. Differentiable in
// input and weight, to any order (csrc/conv_autograd.cpp), like conv2d_weight_grad; the layer's
// own autograd (csrc/convlstm_layer.cpp) calls both below autograd.
struct Conv2dSame {
  static constexpr const char* kName = "conv2d_same";
  static constexpr const char* kArgs = "(Tensor input, Tensor weight)";
  static constexpr const char* kReturns = "Tensor";
  using Result = at::Tensor;
  using Sig = Result(PYFRAMEPRED_CONV2D_SAME_PARAMS);
};

// Gradient difference loss (Mathieu et al. 2015). reduction: 0 = none, 1 = mean, 2 = sum.
struct GdlLossForward {
  static constexpr const char* kName = "gdl_loss_forward";
  static constexpr const char* kArgs = "(Tensor pred, Tensor target, float alpha, int reduction)";
  static constexpr const char* kReturns = "Tensor";
  using Result = at::Tensor;
  using Sig = Result(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS);
};

// Backward of gdl_loss_forward; grad_target is empty unless target_grad.
struct GdlLossBackward {
  static constexpr const char* kName = "gdl_loss_backward";
  static constexpr const char* kArgs =
      "(Tensor grad_out, Tensor pred, Tensor target, float alpha, int reduction, "
      "bool target_grad)";
  static constexpr const char* kReturns = "(Tensor grad_pred, Tensor grad_target)";
  using Result = std::tuple<at::Tensor, at::Tensor>;
  using Sig = Result(PYFRAMEPRED_GDL_LOSS_BACKWARD_PARAMS);
};

// The instruction-set level of the CPU kernels (csrc/cpu/dispatch.cpp): the one in use
// ("default", "avx2", "avx512", "avx512_bf16" or "amx"), the ones compiled into this build, and a switch that
// returns the previous level (for tests and benchmarks; chosen at load time from the CPU and
// PYFRAMEPRED_CPU_ISA otherwise).
struct CpuIsa {
  static constexpr const char* kName = "cpu_isa";
  static constexpr const char* kArgs = "()";
  static constexpr const char* kReturns = "str";
  using Result = std::string;
  using Sig = Result();
};

struct CpuIsaLevels {
  static constexpr const char* kName = "cpu_isa_levels";
  static constexpr const char* kArgs = "()";
  static constexpr const char* kReturns = "str[]";
  using Result = std::vector<std::string>;
  using Sig = Result();
};

struct SetCpuIsa {
  static constexpr const char* kName = "_set_cpu_isa";
  static constexpr const char* kArgs = "(str level)";
  static constexpr const char* kReturns = "str";
  using Result = std::string;
  using Sig = Result(c10::string_view level);
};

// The ConvLSTM layer's copy between planar (NCHW) and interleaved (channels_last) frames
// (csrc/cpu/frames_copy.h): dst.copy_(src) for 4-d or 5-d CPU tensors of one dtype (float32,
// bfloat16, float16) where one side's frames are planar and the other's interleaved; returns
// false, dst untouched, for anything else. For tests; the layer calls the kernel directly.
struct CopyFrames {
  static constexpr const char* kName = "_copy_frames";
  static constexpr const char* kArgs = "(Tensor(a!) dst, Tensor src)";
  static constexpr const char* kReturns = "bool";
  using Result = bool;
  using Sig = Result(const at::Tensor& dst, const at::Tensor& src);
};

// The CPU buffer pool of the fused cell's and layer's large buffers (csrc/buffer_pool.h): its
// byte counts [idle (kept for reuse), in use, the most ever in use at once, the budget of idle
// bytes (-1: that peak, the default)], and the release of every idle block, which also resets the
// peak to what is in use now (the budget then follows the working set that comes after).
struct CpuBufferPoolStats {
  static constexpr const char* kName = "cpu_buffer_pool_stats";
  static constexpr const char* kArgs = "()";
  static constexpr const char* kReturns = "int[]";
  using Result = std::vector<int64_t>;
  using Sig = Result();
};

struct EmptyCpuBufferPool {
  static constexpr const char* kName = "empty_cpu_buffer_pool";
  static constexpr const char* kArgs = "()";
  static constexpr const char* kReturns = "()";
  using Result = void;
  using Sig = Result();
};

// The operators' namespace (torch.ops.pyframepred).
constexpr const char* kNamespace = "pyframepred";

// The schema "name(args) -> returns" of Op; `name` and `returns` replace Op's own (the test
// extension registers the same arguments under other names).
template <typename Op>
std::string schema(const char* name = Op::kName, const char* returns = Op::kReturns) {
  return std::string(name) + Op::kArgs + " -> " + returns;
}

// The typed dispatcher handle of Op, looked up once.
template <typename Op>
const c10::TypedOperatorHandle<typename Op::Sig>& handle() {
  static const auto h =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow((std::string(kNamespace) + "::" + Op::kName).c_str(), "")
          .template typed<typename Op::Sig>();
  return h;
}

}  // namespace op
}  // namespace pyframepred
