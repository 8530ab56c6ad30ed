// One ConvLSTM layer over a whole sequence as a single operator, scheduled the way cuDNN schedules
// LSTM layers:
//   forward   the input convolution of all steps batched (in chunks, see below); per step only
//             the hidden convolution and the fused cell;
//   backward  per step (in reverse) only the fused cell's backward and the hidden convolution's
//             data gradient; per chunk of steps (as the chunk's gate gradients are complete) the
//             input convolution's data and weight gradients and the hidden convolution's weight
//             gradient in batched calls (the weight gradients by the operator
//             conv2d_weight_grad); the bias/peephole gradients reduced once.
// On the CPU, where a prepared (Winograd) convolution runs the layer's weights or the layer runs in
// bfloat16 on ATen's convolutions (the amx level), the merged schedule
// (merged_schedule, below) goes further: one convolution per step over x_t and h_{t-1} side by
// side, and one weight-gradient call for both weights.
// Nothing but the activated gates and the cell states is saved besides the input and the h
// sequence (the caller's input and the output itself, or, in the merged schedule, its frames).
//
// The schedule is written against ATen and the fused cell's operators, so it runs on every device
// those run on (CPU, CUDA). What differs between devices -- the cell's kernels, the convolutions,
// the layout the layer runs in, the chunk size -- comes from a LayerBackend. This header holds the
// schedule and its autograd, templated on how a call picks its backend; it is included by the
// operator (convlstm_layer.cpp, each device's own backend, registered with the dispatcher) and by
// the CUDA execution model's tests (csrc/cuda/emu/layer_emu.cpp: the CUDA backend with the
// emulated CUDA kernels, on CPU tensors). Mixed precision: with float16/bfloat16 x and weights and
// a float32 cell state (c0, bias, peephole; see check_layer_args) the convolutions run in the
// low-precision dtype, h comes out in it and c stays float32; the autocast kernel
// (convlstm_autocast.cpp) arranges exactly that.
#pragma once
#include <ATen/ATen.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "autograd_utils.h"
#include "conv_weight_grad.h"
#include "convlstm_host.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace layer {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the schedule asks of the device it runs on. The operator takes the device's own
// (convlstm_layer.cpp: device_backend); the CUDA execution model's tests take the CUDA one with
// the emulated kernels, on CPU tensors.
struct LayerBackend {
  // The fused cell's forward writing h into a given tensor (GatesForwardInto); null: the
  // operator, its h copied in.
  GatesForwardInto* gates_forward_into = nullptr;
  // The fused cell's forward and backward; null: the operators, through the dispatcher.
  op::ConvLSTMGatesForward::Sig* gates_forward = nullptr;
  op::ConvLSTMGatesBackward::Sig* gates_backward = nullptr;
  // The fused cell's backward leaving the parameter gradients as partial sums
  // (GatesBackwardPartial), summed once per call; null: gates_backward, finished per step.
  GatesBackwardPartial* gates_backward_partial = nullptr;
  // The fused cell's backward for a sum of two gradients of h (GatesBackwardAdd); null: none.
  GatesBackwardAdd* gates_backward_add = nullptr;
  // The device's prepared convolution (PrepareConvSame); null: none.
  PrepareConvSame* prepare_conv = nullptr;
  // The device's weight gradients summed over calls (WeightGradSum); nulls: none.
  WeightGradSum weight_grad_sum;
  // The device's copy between planar (NCHW) and interleaved (channels_last) frames
  // (frames_copy_kernel, convlstm_host.h); null: copy_.
  op::CopyFrames::Sig* copy_frames = nullptr;
  // The CPU's convolutions: the operator conv2d_same, and data gradients as convolutions with the
  // flipped weight (where prepare_conv takes them). Otherwise ATen's convolution and its backward
  // (cuDNN on a GPU). Weight gradients are the operator conv2d_weight_grad's on every device.
  bool own_convolutions = false;
  // Runs in channels_last whatever the input's layout (see run_format).
  bool always_channels_last = false;
  // Bytes of gates per chunk of batched steps (see chunk_steps).
  int64_t chunk_bytes = 12 << 20;
  // Fresh buffers of the schedule are filled with NaN (the execution model's tests: an element
  // the schedule fails to write then shows in the results).
  bool poison_buffers = false;
};

// A device's conventions, without its kernels. On the CPU the layer runs channels_last whatever
// the input's layout, as oneDNN's 3x3 convolutions run about twice as fast on channels_last as on
// NCHW at ConvLSTM sizes (e.g. 15 vs 32 ms for (8, 32, 32, 32) -> 128 channels on one core); the
// convolutions are our own operators; and the chunk of batched steps is small, about an L2 cache:
// steps are batched while they are small (where a call's overhead shows), and a step of 3 MiB or
// more runs alone, its gates and gate gradients never copied into a chunk. On a 2-core AVX-512
// Xeon that beat 12 MiB chunks by 3-10% per training step at (8, 16, [32]) and (8, 16, [32, 32])
// at 32x32, float32 and bf16 (and tied at 4x64x[64]@64, where a step was alone already). Other
// devices (CUDA) take the defaults above: the input's layout, ATen's convolutions (cuDNN) and
// 12 MiB chunks (not re-measured on a GPU). The CUDA execution model's tests take these too.
inline LayerBackend conventions(c10::DeviceType device) {
  LayerBackend b;
  if (device == c10::DeviceType::CPU) {
    b.own_convolutions = true;
    b.always_channels_last = true;
    b.chunk_bytes = 3 << 20;
  }
  return b;
}

// Picks the backend of a call from a tensor of it (x; in backward, a saved weight).
using ResolveBackend = LayerBackend (*)(const at::Tensor& like);

// The backend's kernel for Op where it has one, else the operator (through the dispatcher).
template <typename Op, typename... Args>
typename Op::Result call_op(typename Op::Sig* kernel, const Args&... args) {
  if (kernel != nullptr) return kernel(args...);
  return op::handle<Op>().call(args...);
}

// `t`, a buffer the schedule just allocated, as the backend wants fresh ones (NaN-filled for the
// execution model's tests).
inline at::Tensor fresh(const LayerBackend& b, at::Tensor t) {
  return b.poison_buffers ? t.fill_(std::numeric_limits<double>::quiet_NaN()) : t;
}

// A fresh buffer of the schedule (buffer_pool.h: from the CPU's pool where it is on).
inline at::Tensor buffer(const LayerBackend& b, at::IntArrayRef sizes,
                         const at::TensorOptions& opts) {
  return fresh(b, cell_buffer(sizes, opts));
}

// dst.copy_(src): through the device's frames copy where it takes these tensors (a change of
// layout: on the CPU 2.4-7.4x faster than copy_ at the layer's sizes, cpu/frames_copy.h), else
// copy_ (which also casts, in the same pass, where the dtypes differ: x_cast).
inline void copy_into(const LayerBackend& b, const at::Tensor& dst, const at::Tensor& src) {
  if (b.copy_frames == nullptr || at::areAnyTensorSubclassLike({dst, src}) ||
      !b.copy_frames(dst, src)) {
    dst.copy_(src);
  }
}

// gates_forward writing h into `h_out` (a frame of the layer's h sequence) where the device has
// such a kernel (GatesForwardInto) and the tensors are plain ones, otherwise through the operator
// and copied in: fake tensors (torch.compile's tracing), tensor subclasses and dispatch modes see
// the operator call. In profiles the direct call shows as the operator it stands for.
inline op::ConvLSTMGatesForward::Result gates_forward_into(
    const LayerBackend& b, const at::Tensor& h_out, PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  const auto subclass_like = [](const std::optional<at::Tensor>& t) {
    return t.has_value() && at::isTensorSubclassLike(*t);
  };
  const bool plain = !at::areAnyTensorSubclassLike({x_gates, c_prev, h_out}) &&
                     !subclass_like(h_gates) && !subclass_like(bias) && !subclass_like(peephole);
  GatesForwardInto* kernel = plain ? b.gates_forward_into : nullptr;
  op::ConvLSTMGatesForward::Result out;
  if (kernel != nullptr) {
    RECORD_FUNCTION("pyframepred::convlstm_gates_forward", std::vector<c10::IValue>());
    out = kernel(x_gates, h_gates, c_prev, bias, peephole, save_gates, h_out);
  } else {
    out = call_op<op::ConvLSTMGatesForward>(b.gates_forward, x_gates, h_gates, c_prev, bias,
                                            peephole, save_gates);
  }
  if (!std::get<0>(out).is_same(h_out)) {  // written elsewhere (h_out did not fit the kernel)
    h_out.copy_(std::get<0>(out));
    std::get<0>(out) = h_out;
  }
  return out;
}

// Whether none of the tensors is a subclass or fake one (which must see operator calls).
inline bool plain_tensors(const std::vector<at::Tensor>& saved, const at::Tensor& a,
                          const at::Tensor& b, const at::Tensor& c) {
  const auto plain = [](const at::Tensor& t) { return !t.defined() || !at::isTensorSubclassLike(t); };
  return plain(a) && plain(b) && plain(c) && std::all_of(saved.begin(), saved.end(), plain);
}

// The cell's backward: the device's GatesBackwardPartial where `partial_sums` (the third result
// then holds unfinished partial sums), else the operator's (finished parameter gradients).
inline op::ConvLSTMGatesBackward::Result gates_backward(const LayerBackend& b, bool partial_sums,
                                                        PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  if (partial_sums) {
    RECORD_FUNCTION("pyframepred::convlstm_gates_backward", std::vector<c10::IValue>());
    return b.gates_backward_partial(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  }
  return call_op<op::ConvLSTMGatesBackward>(b.gates_backward, grad_h, grad_c, gates, c_prev,
                                            peephole, param_grads);
}

// The cell's backward for grad_h + grad_h_add (GatesBackwardAdd); in profiles as the operator.
inline op::ConvLSTMGatesBackward::Result gates_backward_add(
    const LayerBackend& b, PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS, const at::Tensor& grad_h_add) {
  RECORD_FUNCTION("pyframepred::convlstm_gates_backward", std::vector<c10::IValue>());
  return b.gates_backward_add(grad_h, grad_c, gates, c_prev, peephole, param_grads, grad_h_add);
}

inline bool defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline bool requires_grad(const std::optional<at::Tensor>& t) {
  return defined(t) && t->requires_grad();
}

// Whether t carries a forward-mode tangent (torch.autograd.forward_ad, and torch.func.jvp/jacfwd,
// which run on it): the layer's autograd, a C++ Function, has no jvp.
inline bool has_tangent(const std::optional<at::Tensor>& t) {
  return defined(t) && t->_fw_grad(/*level=*/0).defined();
}

// Shapes of one call, checked once.
struct LayerShape {
  int64_t T, N, Cin, C, H, W, kh, kw;
  at::ScalarType state_dtype;  // of c (and bias, peephole, c0): x's, or float32 (mixed precision)
  at::ScalarType dtype;        // the layer runs in (the weights', h's): x's, or x's cast (x_cast)
  bool seq = false;            // x is a sequence (T, N, C_in, H, W), not time-major frames
  std::vector<int64_t> padding() const { return {kh / 2, kw / 2}; }
  std::vector<int64_t> state() const { return {N, C, H, W}; }
};

// Whether x is float32 beside float16/bfloat16 weights: the layer runs in the weights' dtype and
// casts x as it reads it -- under autocast (convlstm_autocast.cpp) one pass over x, in the copy of
// x into the merged schedule's frames, instead of autocast's cast and then that copy (at
// 4x64x[64]@64, T = 10, on 2 Xeon cores: 6.2 and 4.0 ms a training step).
inline bool x_cast(const at::Tensor& x, const at::Tensor& weight_x) {
  return x.scalar_type() == at::kFloat && is_reduced_float(weight_x.scalar_type());
}

inline LayerShape check_layer_args(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  constexpr const char* op = "convlstm_layer";
  const at::Tensor& wx = weight_x;
  const at::Tensor& wh = weight_h;
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, op, ": x must be a sequence (T, N, C_in, H, W) or "
              "the frames of all steps time-major (T*N, C_in, H, W), got shape ",
              shape_str(x.sizes()));
  TORCH_CHECK(steps >= 1, op, ": steps must be >= 1, got ", std::to_string(steps));
  const bool seq = x.dim() == 5;
  if (seq) {
    TORCH_CHECK(x.size(0) == steps, op, ": x is a sequence of ", std::to_string(x.size(0)),
                " steps, but steps = ", std::to_string(steps));
  } else {
    TORCH_CHECK(x.size(0) % steps == 0, op, ": x has ", std::to_string(x.size(0)),
                " frames, not a multiple of steps = ", std::to_string(steps));
  }
  TORCH_CHECK(wh.dim() == 4 && wh.size(0) == 4 * wh.size(1) && wh.size(1) > 0, op,
              ": weight_h must be (4*C, C, kh, kw), got shape ", shape_str(wh.sizes()));
  LayerShape s;
  s.seq = seq;
  s.T = steps;
  s.N = seq ? x.size(1) : x.size(0) / steps;
  s.Cin = x.size(seq ? 2 : 1);
  s.C = wh.size(1);
  s.H = x.size(-2);
  s.W = x.size(-1);
  s.kh = wh.size(2);
  s.kw = wh.size(3);
  TORCH_CHECK(s.kh % 2 == 1 && s.kw % 2 == 1, op, ": kernel sizes must be odd ('same' padding), "
              "got weight_h of shape ", shape_str(wh.sizes()));
  TORCH_CHECK(wx.dim() != 4 || (wx.size(2) == s.kh && wx.size(3) == s.kw), op,
              ": weight_x and weight_h must have one kernel size, got (", std::to_string(wx.size(2)),
              ", ", std::to_string(wx.size(3)), ") and (", std::to_string(s.kh), ", ",
              std::to_string(s.kw), ")");
  TORCH_CHECK(wx.dim() == 4 && wx.size(0) == 4 * s.C && wx.size(1) == s.Cin &&
                  wx.size(2) == s.kh && wx.size(3) == s.kw,
              op, ": weight_x must be (4*C, C_in, kh, kw) = (", std::to_string(4 * s.C), ", ",
              std::to_string(s.Cin), ", ", std::to_string(s.kh), ", ", std::to_string(s.kw),
              "), got ", shape_str(wx.sizes()));
  check_float_tensor(x, op, "x");
  // float32 x with float16/bfloat16 weights: cast to theirs as the layer reads it (x_cast).
  if (x_cast(x, wx)) {
    check_device(wx, x, op, "weight_x", "x");
  } else {
    check_like(wx, x, op, "weight_x", "x");
  }
  check_like(wh, wx, op, "weight_h", "weight_x");
  s.dtype = wx.scalar_type();
  // The cell state's dtype is that of c0, bias and peephole (which must agree): the weights', or
  // float32 when they are float16/bfloat16 (mixed precision, as the autocast kernel arranges);
  // the weights' when none of them is given.
  s.state_dtype = s.dtype;
  const char* state_name = nullptr;
  for (const auto& [t, name] :
       {std::make_pair(&c0, "c0"), std::make_pair(&bias, "bias"), std::make_pair(&peephole, "peephole")}) {
    if (!defined(*t)) continue;
    check_state_dtype(**t, s.dtype, op, name, "weight_x");
    if (state_name == nullptr) {
      s.state_dtype = (*t)->scalar_type();
      state_name = name;
    } else {
      TORCH_CHECK((*t)->scalar_type() == s.state_dtype, op, ": ", name, " has dtype ",
                  (*t)->scalar_type(), " but ", state_name, " has dtype ", s.state_dtype,
                  "; c0, bias and peephole must have one dtype");
    }
  }
  if (defined(h0)) check_like(*h0, wx, op, "h0", "weight_x");
  if (defined(bias)) {
    check_device(*bias, x, op, "bias", "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * s.C, op, ": bias must have shape (4*C,) = (",
                std::to_string(4 * s.C), ",), got ", shape_str(bias->sizes()));
  }
  if (defined(peephole)) {
    check_device(*peephole, x, op, "peephole", "x");
    TORCH_CHECK(peephole->dim() == 2 && peephole->size(0) == 3 && peephole->size(1) == s.C, op,
                ": peephole must have shape (3, C) = (3, ", std::to_string(s.C), "), got ",
                shape_str(peephole->sizes()));
  }
  for (const auto& [t, name] : {std::make_pair(&h0, "h0"), std::make_pair(&c0, "c0")}) {
    if (!defined(*t)) continue;
    check_device(**t, x, op, name, "x");
    TORCH_CHECK((*t)->sizes() == at::IntArrayRef(s.state()), op, ": ", name,
                " must have shape (N, C, H, W) = (", std::to_string(s.N), ", ",
                std::to_string(s.C), ", ", std::to_string(s.H), ", ", std::to_string(s.W),
                "), got ", shape_str((*t)->sizes()));
  }
  return s;
}

// A convolution the layer runs at every step: its weight and, where the device has a direct
// kernel for it, the weight prepared once per layer call (PreparedConv, conv_weight_grad.h: on the
// CPU the Winograd transform, which conv2d_same would otherwise redo at every call).
struct StepConv {
  at::Tensor weight;
  PreparedConv prepared;
};

// For inputs of the weight's dtype. `like`: a tensor of the call. Not prepared for fake tensors
// (torch.compile's tracing), tensor subclasses and dispatch modes: they see the operator calls.
inline StepConv step_conv(const LayerBackend& b, const at::Tensor& weight, const at::Tensor& like) {
  StepConv c{weight, {}};
  if (b.prepare_conv != nullptr && !at::areAnyTensorSubclassLike({weight, like})) {
    c.prepared = b.prepare_conv(weight, weight.scalar_type());
  }
  return c;
}

// `y` plus `addend` (where defined), in `out` (where defined).
inline at::Tensor finish_conv(at::Tensor y, const at::Tensor& addend, const at::Tensor& out) {
  if (addend.defined()) y = y.add_(addend);  // y is the convolution's own result
  return out.defined() ? out.copy_(y) : y;
}

// conv(input, c.weight) + addend (where defined), written into `out` (where defined): the
// prepared kernel where there is one and the tensors are plain ones, else the operator
// conv2d_same (3x3 in float32, and in bfloat16 at the avx512_bf16 level: a Winograd F(4x4, 3x3)
// and F(2x2, 3x3) kernel of ours, csrc/cpu/conv_cpu.cpp, round-robin against oneDNN in
// benchmarks/results/conv_same_rr_cpu_*.md; otherwise ATen's) on the CPU, ATen's convolution
// elsewhere. In profiles the prepared kernel shows as the operator it stands for.
inline at::Tensor conv(const LayerBackend& b, const at::Tensor& input, const StepConv& c,
                       const LayerShape& s, const at::Tensor& addend = {},
                       const at::Tensor& out = {}) {
  const bool plain = !at::isTensorSubclassLike(input) &&
                     !(addend.defined() && at::isTensorSubclassLike(addend)) &&
                     !(out.defined() && at::isTensorSubclassLike(out));
  if (c.prepared.run != nullptr && plain) {
    RECORD_FUNCTION("pyframepred::conv2d_same", std::vector<c10::IValue>());
    // A result of its own comes from the buffer pool (buffer_pool.h), as the cell's do: the
    // layer allocates these gate-sized tensors at every step, and from malloc they would fault in
    // fresh pages whenever glibc trims the top of its heap between training steps.
    const at::Tensor dst =
        out.defined() ? out
                      : buffer(b, {input.size(0), c.prepared.u.size(2), input.size(2), input.size(3)},
                               input.options().memory_format(at::MemoryFormat::ChannelsLast));
    // The kernel adds an addend of the result's dtype, read in place in any layout (e.g. a step
    // of a batch-major sequence's gradient), as it writes the result; one of another dtype is
    // added afterwards, as it is (never copied into a layout first).
    const bool fused_add = addend.defined() && addend.scalar_type() == input.scalar_type();
    if (fused_add || !addend.defined()) return c.prepared.run(input, c.prepared.u, addend, dst);
    return c.prepared.run(input, c.prepared.u, at::Tensor(), dst).add_(addend);
  }
  if (b.own_convolutions) {
    return finish_conv(op::handle<op::Conv2dSame>().call(input, c.weight), addend, out);
  }
  return finish_conv(at::convolution(input, c.weight, std::nullopt, {1, 1}, s.padding(), {1, 1},
                                     false, {0, 0}, 1),
                     addend, out);
}

// What conv_data_grad needs of a weight: on the CPU in float32 and bfloat16, the weight flipped in
// both spatial dims with its channel dims swapped, (C_in, C_out, kh, kw) -- the data gradient of
// a stride-1 'same' convolution is the convolution of the output's gradient with it, which
// conv2d_same runs as Winograd where it can --, prepared as a StepConv; empty elsewhere (ATen's
// convolution backward).
inline StepConv flipped_weight(const LayerBackend& b, const at::Tensor& w, const at::Tensor& like) {
  if (!b.own_convolutions || (w.scalar_type() != at::kFloat && w.scalar_type() != at::kBFloat16)) {
    return {};
  }
  return step_conv(b, flipped_transposed(w), like);
}

// The gradient of `input` of conv(input, weight) for the gradient dg of its output, plus addend
// (where defined), written into out (where defined).
inline at::Tensor conv_data_grad(const LayerBackend& b, const at::Tensor& dg, const at::Tensor& input,
                                 const at::Tensor& weight, const StepConv& flipped,
                                 const LayerShape& s, const at::Tensor& addend = {},
                                 const at::Tensor& out = {}) {
  if (flipped.weight.defined()) return conv(b, dg, flipped, s, addend, out);
  return finish_conv(std::get<0>(at::convolution_backward(dg, input, weight, std::nullopt, {1, 1},
                                                          s.padding(), {1, 1}, false, {0, 0}, 1,
                                                          {true, false, false})),
                     addend, out);
}

// The weight gradient of conv(input, .) for the gradient dg of its output, batched over all the
// frames given: the operator conv2d_weight_grad (on the CPU a tiled kernel about twice as fast as
// ATen's at these shapes, csrc/cpu/conv_cpu.cpp; elsewhere ATen's).
inline at::Tensor weight_grad(const at::Tensor& dg, const at::Tensor& input, const LayerShape& s) {
  return op::handle<op::Conv2dWeightGrad>().call(dg, input, s.kh, s.kw);
}

inline void add_to(at::Tensor& sum, at::Tensor term) {
  sum = sum.defined() ? sum.add_(term) : std::move(term);
}

// A weight's gradient summed over the chunks of the backward sweep: in the device's float32
// partial sums where it keeps them (WeightGradSum: rounded once at the end), else the operator's
// results added.
struct WeightGradTotal {
  at::Tensor added, sum, input;  // input: one of the inputs summed (finish's layout and dtype)

  void add(const LayerBackend& b, const at::Tensor& dg, const at::Tensor& x, const LayerShape& s) {
    if (add_to_sum(b, dg, x, s)) {
      input = x;
      return;
    }
    add_to(added, weight_grad(dg, x, s));
  }

  // Adds the products of x_lead, the first channels of an input whose other channels are zeros,
  // where the device's partial sums, allocated by an earlier add of the whole input, take it;
  // false, having done nothing, otherwise.
  bool add_leading(const LayerBackend& b, const at::Tensor& dg, const at::Tensor& x_lead,
                   const LayerShape& s) {
    return sum.defined() && add_to_sum(b, dg, x_lead, s);
  }

  at::Tensor result(const LayerBackend& b, const LayerShape& s) const {
    if (!sum.defined()) return added;
    at::Tensor total = b.weight_grad_sum.finish(sum, s.kh, s.kw, input);
    return added.defined() ? total.add_(added) : total;
  }

 private:
  // The products added into the device's partial sums, where it keeps them for these tensors;
  // false, having done nothing, otherwise. The kernels that keep sums are bfloat16 ones: others go
  // to the operator straight away (in profiles, then, one event per call).
  bool add_to_sum(const LayerBackend& b, const at::Tensor& dg, const at::Tensor& x,
                  const LayerShape& s) {
    if (b.weight_grad_sum.add == nullptr || dg.scalar_type() != at::kBFloat16 ||
        at::areAnyTensorSubclassLike({dg, x})) {
      return false;
    }
    RECORD_FUNCTION("pyframepred::conv2d_weight_grad", std::vector<c10::IValue>());
    return b.weight_grad_sum.add(dg, x, s.kh, s.kw, sum);
  }
};

// The batched convolutions run over chunks of steps rather than the whole sequence at once: a
// (T*N, 4C, H, W) tensor is far above glibc's largest mmap threshold (32 MiB), so every training
// step would fault in and zero fresh pages for it (tens of thousands of faults per step); chunks
// of at most b.chunk_bytes of gates are recycled by the default allocator.
inline int64_t chunk_steps(const LayerBackend& b, const LayerShape& s, const at::Tensor& like) {
  const int64_t per_step = s.N * 4 * s.C * s.H * s.W * static_cast<int64_t>(like.element_size());
  return std::clamp<int64_t>(b.chunk_bytes / std::max<int64_t>(per_step, 1), 1, s.T);
}

// Where x is a sequence (T, N, C, H, W): whether its batch dim lies outer in memory (a batch-first
// tensor seen time-major), and whether its frames are channels_last. The output sequence is laid
// out the same way; the fake kernel (pyframepred/ops/_layer.py) decides alike.
inline bool batch_major(const at::Tensor& seq) {
  return seq.size(0) > 1 && seq.size(1) > 1 && seq.stride(1) > seq.stride(0);
}
inline bool frames_channels_last(const at::Tensor& seq) { return seq.size(2) > 1 && seq.stride(2) == 1; }

// The layout the layer runs in: channels_last when the input or the weights are, and always where
// the backend says so (the CPU's, see convlstm_layer.cpp): the input is converted once per layer,
// not at every step. The outputs come back in this layout (a sequence's h in the layout of x,
// see batch_major).
inline at::MemoryFormat run_format(const LayerBackend& b, const at::Tensor& x,
                                   const at::Tensor& w) {
  const bool x_cl = x.dim() == 5 ? frames_channels_last(x)
                                 : x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const bool cl = b.always_channels_last || x_cl ||
                  w.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return cl && x.size(x.dim() - 3) > 0 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A sequence (T, N, C, H, W) as the frames of all steps, time-major (T*N, C, H, W), in `fmt`,
// where it lies so in memory: a view; undefined otherwise.
inline at::Tensor time_major_view(const at::Tensor& seq, at::MemoryFormat fmt) {
  const bool dense = fmt == at::MemoryFormat::ChannelsLast ? seq.permute({0, 1, 3, 4, 2}).is_contiguous()
                                                          : seq.is_contiguous();
  return dense ? seq.flatten(0, 1) : at::Tensor();
}

// The same frames in any case: the view, else one copy into a buffer of the schedule.
inline at::Tensor time_major(const LayerBackend& b, const at::Tensor& seq, at::MemoryFormat fmt) {
  at::Tensor view = time_major_view(seq, fmt);
  if (view.defined()) return view;
  at::Tensor frames = buffer(b, {seq.size(0) * seq.size(1), seq.size(2), seq.size(3), seq.size(4)},
                             seq.options().memory_format(fmt));
  copy_into(b, frames.unflatten(0, {seq.size(0), seq.size(1)}), seq);
  return frames;
}

// The output sequence (T, N, C, H, W) of a call on the sequence x, laid out as x (batch_major,
// frames_channels_last).
inline at::Tensor sequence_like(const LayerBackend& b, const at::Tensor& x, const LayerShape& s) {
  const bool cl = frames_channels_last(x), bm = batch_major(x);
  const int64_t frame = s.C * s.H * s.W;
  const int64_t sc = cl ? 1 : s.H * s.W, sw = cl ? s.C : 1, sh = s.W * sw;
  return fresh(b, cell_buffer_strided({s.T, s.N, s.C, s.H, s.W},
                                      {bm ? frame : s.N * frame, bm ? s.T * frame : frame, sc, sh, sw},
                                      x.options().dtype(s.dtype)));
}

struct Rollout {
  at::Tensor x, h0;  // the time-major frames of x and the initial h, in the layout the layer runs in
  at::Tensor wx, wh; // the weights in that layout (converted once, not by every convolution)
  // h of every step: the output (x's shape: frames, or a sequence laid out as x) and, where the
  // merged schedule did not run, the same as time-major frames in the run layout (a view of the
  // output where it lies so) -- what backward reads.
  at::Tensor h_seq, h_frames, h_last, c_last;
  // The merged schedule's step inputs (see merged_schedule): frame t = (x_t, h_{t-1}), h_{-1} = h0
  // or zeros; all T frames when saving (the weight gradients' input), one reused frame otherwise.
  at::Tensor xh;
  std::vector<at::Tensor> gates;   // activated gates of each step (when saving)
  std::vector<at::Tensor> c_prev;  // the cell state each step started from (when saving)
};

// The merged schedule (the CPU's; where it may run: merged_schedule's last lines): each
// step's gates come from one convolution of the step's frame (x_t, h_{t-1}) -- x_t and h_{t-1}
// side by side in the channels of one channels_last frame -- with the weights side by side,
// (4C, C_in + C, 3, 3), instead of the input's and the hidden convolution's results summed by the
// cell. One output transform, one pass over the products and one gate tensor for the cell to read
// instead of two; the weight gradients become one call per chunk over the saved frames, whose
// output-gradient transform the two weights share. On 2 Zen 4 cores at (4, 64 -> 256, 64x64) in
// bf16 the step's convolution took 12.2 ms against 14.1 for the two, the weight gradients 12.4
// against 13.0. The frames cost one copy of x per call (straight from x, in whatever layout it
// comes) and one of the h sequence out of them at the end (the cell writes each h into the next
// frame). Step 0 without h0 convolves x alone. In bfloat16 where the device runs its own
// convolutions but has no prepared one for these weights (the amx level, where oneDNN's
// convolutions run on the tile unit), the step's one convolution is ATen's: on 2 Xeon cores with
// AMX a bf16 training step took 29.2 against 32.0 ms at 8x16x[32]@32 and 61.0 against 66.0 at
// 8x16x[32,32]@32.
// Whether it may run: x and its weight are plain tensors and x's convolution is prepared, or the
// device runs its own convolutions and x is bfloat16; and some step sees an h. Where x's
// convolution is prepared, it runs only if the joined weight's is too (rollout).
inline bool merged_schedule(const LayerBackend& b, const LayerShape& s, const at::Tensor& x,
                            const StepConv& conv_x, const std::optional<at::Tensor>& h0) {
  const bool own = conv_x.prepared.run != nullptr ||
                   (b.own_convolutions && s.dtype == at::kBFloat16 &&
                    !at::areAnyTensorSubclassLike({x, conv_x.weight}));
  return own && (s.T > 1 || defined(h0)) &&
         !(defined(h0) && at::isTensorSubclassLike(*h0));
}

// The merged schedule's convolution of the frames (x_t, h_{t-1}) where it runs, else none (an
// undefined weight). conv_x: x's convolution (step_conv of the weight in the run layout `fmt`).
inline StepConv merged_conv(const LayerBackend& b, const LayerShape& s, const at::Tensor& x,
                            const StepConv& conv_x, const at::Tensor& wh,
                            const std::optional<at::Tensor>& h0, at::MemoryFormat fmt) {
  if (!merged_schedule(b, s, x, conv_x, h0)) return {};
  StepConv conv_xh = step_conv(b, at::cat({conv_x.weight, wh}, 1).contiguous(fmt), x);
  // Where x's convolution is prepared but the joined one is not (C_in + C no multiple of the
  // vector width), the two prepared ones apart beat ATen's joined one.
  if (conv_x.prepared.run != nullptr && conv_xh.prepared.run == nullptr) return {};
  return conv_xh;
}

// c0, or zeros, in the layout the layer runs in, `fmt` (at::zeros would make NCHW ones, which the
// cell of a channels_last run would read across channels, at 2-3 times the time of a step).
inline at::Tensor initial_c(const LayerBackend& b, const LayerShape& s,
                            const std::optional<at::Tensor>& c0, const at::Tensor& x,
                            at::MemoryFormat fmt) {
  if (defined(c0)) return c0->contiguous(fmt);
  return buffer(b, s.state(), x.options().dtype(s.state_dtype).memory_format(fmt)).zero_();
}

// The forward schedule. `state_dtype` is the dtype of the cell state c (float32 under mixed
// precision, where the gates come in the low-precision dtype).
inline Rollout rollout(const LayerBackend& b, const at::Tensor& x, const LayerShape& s,
                       const at::Tensor& wx, const at::Tensor& wh,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& peephole,
                       const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& c0,
                       bool save) {
  Rollout r;
  const auto fmt = run_format(b, x, wx);
  const auto opts = x.options().dtype(s.dtype).memory_format(fmt);
  r.wx = wx.contiguous(fmt);
  r.wh = wh.contiguous(fmt);
  at::Tensor c = initial_c(b, s, c0, x, fmt);
  std::optional<at::Tensor> h;
  if (defined(h0)) {
    r.h0 = h0->contiguous(fmt);
    h = r.h0;
  }
  if (save) {
    r.gates.reserve(s.T);
    r.c_prev.reserve(s.T);
  }
  // Step t's input frames (N, C_in, H, W) as x holds them, and step t's part of the output.
  auto x_step = [&](int64_t t) { return s.seq ? x.select(0, t) : x.narrow(0, t * s.N, s.N); };
  // x in the layer's dtype where it is to be cast (x_cast) and no copy of it casts it.
  auto x_run = [&](const at::Tensor& t) { return t.scalar_type() == s.dtype ? t : t.to(s.dtype); };
  r.h_seq = s.seq ? sequence_like(b, x, s) : buffer(b, {s.T * s.N, s.C, s.H, s.W}, opts);
  auto h_step = [&](int64_t t) {
    return s.seq ? r.h_seq.select(0, t) : r.h_seq.narrow(0, t * s.N, s.N);
  };
  const StepConv conv_x = step_conv(b, r.wx, x);
  const StepConv conv_xh = merged_conv(b, s, x, conv_x, r.wh, h0, fmt);
  if (conv_xh.weight.defined()) {
    const int64_t frames = save ? s.T : 1;
    r.xh = buffer(b, {frames * s.N, s.Cin + s.C, s.H, s.W}, opts);
    auto frame = [&](int64_t t) { return r.xh.narrow(0, (save ? t : 0) * s.N, s.N); };
    auto h_part = [&](int64_t t) { return frame(t).narrow(1, s.Cin, s.C); };
    // Saving (training), x goes into the frames in one copy. The cell writes each h_t where the
    // next step's convolution reads it, the h part of the next frame (in the run layout, in
    // order), and the last h into a buffer of its own, h_last; the output gets the h sequence in
    // copies: of all the frames at once at the end when saving, step by step otherwise (then one
    // frame serves every step). Written straight into an output in another layout (an NCHW
    // sequence), the cell's stores would go across channels: 3.5 times the time of a step's cell
    // at 4x64x[64]@64 in float32.
    if (save) {
      const at::Tensor x_part = r.xh.narrow(1, 0, s.Cin);
      copy_into(b, s.seq ? x_part.unflatten(0, {s.T, s.N}) : x_part, x);
    }
    if (h.has_value()) {
      h_part(0).copy_(*h);
    } else if (save) {
      h_part(0).zero_();  // step 0 runs on x alone; its frame is the weight gradient's input
    }
    for (int64_t t = 0; t < s.T; ++t) {
      at::Tensor gates_in;
      if (h.has_value()) {
        if (!save) copy_into(b, frame(t).narrow(1, 0, s.Cin), x_step(t));
        gates_in = conv(b, frame(t), conv_xh, s);
      } else {
        gates_in = conv(b, x_run(x_step(t)).contiguous(fmt), conv_x, s);
      }
      const bool last = t + 1 == s.T;
      const at::Tensor h_t = last ? buffer(b, s.state(), opts) : h_part(t + 1);
      auto [h_new, c_new, gates] =
          gates_forward_into(b, h_t, gates_in, std::nullopt, c, bias, peephole, save);
      if (save) {
        r.gates.push_back(std::move(gates));
        r.c_prev.push_back(c);
      }
      c = std::move(c_new);
      h = std::move(h_new);  // h_t
      if (!save && !last) copy_into(b, h_step(t), *h);
    }
    if (save && s.T > 1) {
      const int64_t n = s.T - 1;
      const at::Tensor hs = r.xh.narrow(0, s.N, n * s.N).narrow(1, s.Cin, s.C);
      if (s.seq) {
        copy_into(b, r.h_seq.narrow(0, 0, n), hs.unflatten(0, {n, s.N}));
      } else {
        copy_into(b, r.h_seq.narrow(0, 0, n * s.N), hs);
      }
    }
    copy_into(b, h_step(s.T - 1), *h);
    r.h_last = *h;  // a tensor of its own, not a view of the output
    // In the run layout, as the fake kernel has it: the cell's c takes the layout of its gates,
    // which a convolution of frames contiguous in both layouts (one channel, a frame one pixel
    // wide) may give either way.
    r.c_last = c.contiguous(fmt);
    return r;
  }
  r.x = s.seq ? time_major(b, x_run(x), fmt) : x_run(x).contiguous(fmt);
  // The cell writes each step's h straight into the h frames: the output's, where it lies
  // time-major in the run layout, else frames of their own, copied into it at the end.
  if (!s.seq) {
    r.h_frames = r.h_seq;
  } else {
    r.h_frames = time_major_view(r.h_seq, fmt);
    if (!r.h_frames.defined()) r.h_frames = buffer(b, {s.T * s.N, s.C, s.H, s.W}, opts);
  }
  const StepConv conv_h = step_conv(b, r.wh, r.x);
  const int64_t K = chunk_steps(b, s, r.x);
  for (int64_t t0 = 0; t0 < s.T; t0 += K) {
    const int64_t k = std::min(K, s.T - t0);
    const at::Tensor x_gates = conv(b, r.x.narrow(0, t0 * s.N, k * s.N), conv_x, s);
    for (int64_t j = 0; j < k; ++j) {
      std::optional<at::Tensor> h_gates;
      if (h.has_value()) h_gates = conv(b, *h, conv_h, s);
      at::Tensor h_t = r.h_frames.narrow(0, (t0 + j) * s.N, s.N);
      auto [h_new, c_new, gates] =
          gates_forward_into(b, h_t, x_gates.narrow(0, j * s.N, s.N), h_gates, c, bias, peephole,
                             save);
      if (save) {
        r.gates.push_back(std::move(gates));
        r.c_prev.push_back(c);
      }
      c = std::move(c_new);
      h = std::move(h_new);  // h_t
    }
  }
  if (!r.h_frames.is_alias_of(r.h_seq)) {
    copy_into(b, r.h_seq, r.h_frames.unflatten(0, {s.T, s.N}));
  }
  r.h_last = h->clone();  // an output of its own, not a view of h_seq
  r.c_last = c.contiguous(fmt);
  return r;
}

// What backward keeps of the h sequence (where the merged schedule's frames do not hold it): the
// output itself where the h frames are its memory -- so that autograd's version check catches an
// in-place change of the output before backward, which a view of it would not --, else the frames.
inline at::Tensor saved_h(const Rollout& r) {
  return r.h_frames.is_alias_of(r.h_seq) ? r.h_seq : r.h_frames;
}

// What the schedule's backward reads besides the incoming gradients: what the layer's autograd
// (ConvLSTMLayerFunction) saved, or what convlstm_layer_backward rebuilds from its arguments.
struct LayerSaved {
  LayerShape s;
  at::ScalarType x_dtype;  // x's as given: x's gradient comes back in it (x_cast)
  at::Tensor x;            // x's time-major frames in the run layout (where xh does not hold x)
  at::Tensor wx, wh;       // the weights in the run layout
  std::optional<at::Tensor> peephole;
  at::Tensor h0;  // in the run layout, or undefined
  // The h sequence (where xh does not hold it): time-major frames in the run layout, or the output
  // itself (a sequence whose frames lie so).
  at::Tensor h;
  at::Tensor xh;  // the merged schedule's frames, where it ran
  std::vector<at::Tensor> gates, c_prev;  // of every step

  std::vector<at::Tensor> tensors() const {
    std::vector<at::Tensor> all = {x, wx, wh, peephole.value_or(at::Tensor()), h0, h, xh};
    all.insert(all.end(), gates.begin(), gates.end());
    all.insert(all.end(), c_prev.begin(), c_prev.end());
    return all;
  }
};

// Which gradients backward computes, in the order of the layer's tensor arguments: x, weight_x,
// weight_h, bias, peephole, h0, c0.
using LayerNeeds = std::array<bool, 7>;

// The schedule's backward: the gradients of (x, weight_x, weight_h, bias, peephole, h0, c0) from
// those of (h_seq, h_last, c_last) (each may be undefined: zeros); undefined where not needed, or
// where no gradient came in at all.
inline std::array<at::Tensor, 7> layer_backward(const LayerBackend& b, const LayerSaved& sv,
                                                const LayerNeeds& needs, at::Tensor g_seq,
                                                const at::Tensor& grad_h_last,
                                                const at::Tensor& grad_c_last) {
  const LayerShape& s = sv.s;
  const at::ScalarType x_dtype = sv.x_dtype;
  const bool need_x = needs[0], need_wx = needs[1], need_wh = needs[2], need_b = needs[3],
             need_p = needs[4], need_h0 = needs[5], need_c0 = needs[6];
  const std::vector<at::Tensor> saved = sv.tensors();  // (plain_tensors)
  const at::Tensor& xh = sv.xh;
  const at::Tensor& wx = sv.wx;
  const at::Tensor& wh = sv.wh;
  const std::optional<at::Tensor>& peephole = sv.peephole;
  const at::Tensor& h0 = sv.h0;
  // x, and h_{t-1} of the steps from `first` on (first >= 1): views of the frames, or saved.
  const at::Tensor x = xh.defined() ? xh.narrow(1, 0, s.Cin) : sv.x;
  const at::Tensor h_frames = sv.h.defined() && sv.h.dim() == 5 ? sv.h.flatten(0, 1) : sv.h;
  auto h_before = [&](int64_t first, int64_t n) {
    return xh.defined() ? xh.narrow(0, first * s.N, n * s.N).narrow(1, s.Cin, s.C)
                        : h_frames.narrow(0, (first - 1) * s.N, n * s.N);
  };
  auto gates = [&](int64_t t) -> const at::Tensor& { return sv.gates[t]; };
  auto c_prev = [&](int64_t t) -> const at::Tensor& { return sv.c_prev[t]; };
  std::array<at::Tensor, 7> out;
  if (!g_seq.defined() && !grad_h_last.defined() && !grad_c_last.defined()) return out;
  // Incoming gradients in the layout of the saved tensors, so the cell kernels read them in
  // order. The sequence's gradient is brought there step by step, by the sum with the gradient
  // flowing back from the next step where there is one: an expanded gradient (e.g. of .sum())
  // is never materialised whole, nor one in another layout but where noted below.
  const auto fmt = (xh.defined() ? xh : x).suggest_memory_format();
  auto like_state = [&](const at::Tensor& g) {
    if (!g.defined() || g.is_contiguous(fmt)) return g;
    const at::Tensor t = buffer(b, g.sizes(), g.options().memory_format(fmt));
    copy_into(b, t, g);
    return t;
  };
  // Step t's part of the sequence's gradient (of x's shape: a sequence, or frames).
  auto g_step = [&](int64_t t) {
    return s.seq ? g_seq.select(0, t) : g_seq.narrow(0, t * s.N, s.N);
  };
  const at::Tensor g_h_last = like_state(grad_h_last), g_c_last = like_state(grad_c_last);

  at::AutoDispatchBelowADInplaceOrView guard;
  auto zero_state = [&](const at::Tensor& like) {
    return at::zeros({}, like.options()).expand(s.state());
  };
  const bool param_grads = need_b || need_p;
  // The parameter gradients' partial sums of every step, finished once after the sweep, where
  // the device leaves them unfinished (partial_sums); else each step's finished ones are added.
  const bool partial_sums =
      b.gates_backward_partial != nullptr && plain_tensors(saved, g_seq, g_h_last, g_c_last);
  std::vector<at::Tensor> d_param_partials;
  // Reverse sweep over chunks of steps, last chunk first. Per step: the cell's backward and the
  // hidden convolution's data gradient. Per chunk, once its gate gradients are complete: the
  // weight gradients (and the input's) in batched calls over the chunk's steps. Only one
  // chunk's gate gradients are alive at a time, so every chunk reuses the previous one's memory
  // instead of the sweep faulting in a sequence's worth of fresh pages.
  at::Tensor dh_next = g_h_last, dc = g_c_last, d_params, gwx, gwh;
  WeightGradTotal sum_wx, sum_wh, sum_w;
  // dh_next already holds the sequence's gradient of its step's frame (summed into it by the
  // hidden convolution's data gradient, in the same pass over its output).
  bool dh_next_has_seq = false;
  // The input's gradient: written chunk by chunk into gx by the input convolution's prepared
  // data gradient, else its chunks (last first) concatenated at the end.
  at::Tensor gx;
  std::vector<at::Tensor> gx_chunks;
  const bool batched = need_x || need_wx || need_wh;
  const StepConv wh_flipped = flipped_weight(b, wh, x);
  const StepConv wx_flipped = need_x ? flipped_weight(b, wx, x) : StepConv{};
  // Where ATen's convolution gives the hidden data gradient (no prepared one: e.g. bfloat16 at
  // the amx level), add_ sums the sequence's gradient into its result, which across layouts took
  // 1.37 ms against 0.16 within one ((4, 64, 64, 64) bfloat16, 2 Xeon cores): a dense gradient
  // whose frames lie in the other layout is then brought into the layer's, whole, by one frames
  // copy (an expanded one, or one in the layer's layout, is added as it is).
  const auto other_layout = [&](const at::Tensor& g) {
    const bool cl = s.seq ? frames_channels_last(g)
                          : g.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
    return g.is_non_overlapping_and_dense() && cl != (fmt == at::MemoryFormat::ChannelsLast);
  };
  if (g_seq.defined() && wh_flipped.weight.defined() && wh_flipped.prepared.run == nullptr &&
      b.copy_frames != nullptr && other_layout(g_seq) &&
      plain_tensors(saved, g_seq, g_h_last, g_c_last)) {
    g_seq = s.seq ? time_major(b, g_seq, fmt).unflatten(0, {s.T, s.N}) : like_state(g_seq);
  }
  // There, too, the cell's backward adds the sequence's gradient of a step, where its images lie
  // in the layer's layout or are one value each (expanded, e.g. of .sum()), to the gradient flowing
  // back from the next step as it reads them (GatesBackwardAdd), in the accumulation type,
  // instead of an add_ over the state per step, rounded.
  const bool add_in_cell = g_seq.defined() && b.gates_backward_add != nullptr && !partial_sums &&
                           wh_flipped.prepared.run == nullptr &&
                           plain_tensors(saved, g_seq, g_h_last, g_c_last);
  auto cell_addend = [&](int64_t t) {
    if (!add_in_cell) return at::Tensor();
    const at::Tensor g = g_step(t);
    const bool per_image = g.stride(1) == 0 && g.stride(2) == 0 && g.stride(3) == 0;
    if (g.numel() == 0) return at::Tensor();  // an empty batch: nothing to add
    return per_image || g.narrow(0, 0, 1).is_contiguous(fmt) ? g : at::Tensor();
  };
  // The weights' gradients side by side, (4C, C_in + C, kh, kw), where the merged schedule
  // saved its frames and both are wanted: one call per chunk, whose output-gradient transform
  // (Winograd) or packing (the AMX kernel) the two weights share. (bf16, 2 Xeon cores with
  // AMX: a training step took 29.2 / 62.0 ms joined against 31.1 / 65.2 apart at 8x16x[32]@32 /
  // 8x16x[32, 32]@32, and 158.6 against 158.7 at 4x64x[64]@64.)
  const bool joined = xh.defined() && need_wx && need_wh;
  if (need_x && wx_flipped.prepared.run != nullptr) {
    gx = buffer(b, x.sizes(), x.options().memory_format(fmt));
  }
  const int64_t K = chunk_steps(b, s, x);
  for (int64_t t0 = (s.T - 1) / K * K; t0 >= 0; t0 -= K) {
    const int64_t k = std::min(K, s.T - t0);
    std::vector<at::Tensor> d_gates(k);
    for (int64_t t = t0 + k - 1; t >= t0; --t) {
      at::Tensor dh, dh_add;  // the gradient of h_t: dh, plus dh_add where defined
      if (g_seq.defined() && !dh_next_has_seq) {
        const at::Tensor g = g_step(t);
        if (dh_next.defined() && dh_next.is_contiguous(fmt)) dh_add = cell_addend(t);
        if (dh_add.defined()) {
          dh = dh_next;
        } else {
          dh = like_state(dh_next.defined() ? dh_next + g : g);
        }
      } else {
        dh = dh_next.defined() ? dh_next : zero_state(x);
      }
      if (!dc.defined()) dc = zero_state(c_prev(t));
      auto [dg, dc_prev, dp] =
          dh_add.defined()
              ? gates_backward_add(b, dh, dc, gates(t), c_prev(t), peephole, param_grads, dh_add)
              : gates_backward(b, partial_sums, dh, dc, gates(t), c_prev(t), peephole,
                               param_grads);
      if (param_grads && partial_sums) {
        d_param_partials.push_back(std::move(dp));
      } else if (param_grads) {
        d_params = d_params.defined() ? d_params + dp : dp;
      }
      const bool had_h = t > 0 || h0.defined();
      if (had_h && (t > 0 || need_h0)) {
        const at::Tensor h_prev = t > 0 ? h_before(t, 1) : h0;
        // Step t - 1's gradient of h: through the hidden convolution, plus the sequence's.
        const at::Tensor g_prev =
            t > 0 && g_seq.defined() && !cell_addend(t - 1).defined() ? g_step(t - 1)
                                                                      : at::Tensor();
        dh_next = conv_data_grad(b, dg, h_prev, wh, wh_flipped, s, g_prev);
        dh_next_has_seq = g_prev.defined();
      } else {
        dh_next = at::Tensor();
        dh_next_has_seq = false;
      }
      dc = std::move(dc_prev);
      d_gates[t - t0] = std::move(dg);
    }
    if (!batched) continue;
    // The hidden convolution of step t saw h_{t-1}: the chunk's steps [t0, t0 + k) pair with
    // h_seq frames [t0 - 1, t0 + k - 1); step 0 saw h0 (when given), not a frame of h_seq.
    const at::Tensor dg = k == 1 ? d_gates[0] : at::cat(d_gates, 0);
    const at::Tensor x_chunk = x.narrow(0, t0 * s.N, k * s.N);
    if (need_x) {
      if (gx.defined()) {
        conv_data_grad(b, dg, x_chunk, wx, wx_flipped, s, {}, gx.narrow(0, t0 * s.N, k * s.N));
      } else {
        gx_chunks.push_back(conv_data_grad(b, dg, x_chunk, wx, wx_flipped, s));
      }
    }
    if (joined) {
      // Both weights' gradients at once, from the frames (x_t, h_{t-1}) the merged schedule
      // convolved. h_{-1} is h0, or zeros, which add nothing: without h0, where the chunks
      // before (later steps) laid out partial sums of the device for the whole frames, step 0's
      // products are those of its x alone (at 4x64x[64]@64, T = 10, a twentieth of the
      // weight gradients' products).
      const bool lead = t0 == 0 && !h0.defined() && sum_w.sum.defined();
      const int64_t first = lead ? 1 : t0;
      if (first < t0 + k) {
        const int64_t n = t0 + k - first;
        sum_w.add(b, dg.narrow(0, (first - t0) * s.N, n * s.N),
                  xh.narrow(0, first * s.N, n * s.N), s);
      }
      if (lead && !sum_w.add_leading(b, dg.narrow(0, 0, s.N), x.narrow(0, 0, s.N), s)) {
        sum_w.add(b, dg.narrow(0, 0, s.N), xh.narrow(0, 0, s.N), s);
      }
      continue;
    }
    if (need_wx) sum_wx.add(b, dg, x_chunk, s);
    if (need_wh) {
      const int64_t first = t0 == 0 ? 1 : t0;
      if (first < t0 + k) {
        const int64_t n = t0 + k - first;
        sum_wh.add(b, dg.narrow(0, (first - t0) * s.N, n * s.N), h_before(first, n), s);
      }
      if (t0 == 0 && h0.defined()) sum_wh.add(b, d_gates[0], h0, s);
    }
  }
  if (!d_param_partials.empty()) {
    d_params = finish_param_grads(
        d_param_partials.size() == 1 ? d_param_partials[0] : at::cat(d_param_partials, 0),
        s.state_dtype);
  }
  if (need_x && !gx.defined()) {
    std::reverse(gx_chunks.begin(), gx_chunks.end());
    gx = gx_chunks.size() == 1 ? gx_chunks[0] : at::cat(gx_chunks, 0);
  }
  if (need_x) {
    if (gx.scalar_type() != x_dtype) gx = gx.to(x_dtype);  // x was cast (x_cast)
    out[0] = s.seq ? gx.unflatten(0, {s.T, s.N}) : gx;
  }
  if (joined) {
    const at::Tensor gw = sum_w.result(b, s);
    gwx = gw.narrow(1, 0, s.Cin).contiguous(wx.suggest_memory_format());
    gwh = gw.narrow(1, s.Cin, s.C).contiguous(wh.suggest_memory_format());
  } else {
    gwx = sum_wx.result(b, s);
    gwh = sum_wh.result(b, s);
  }
  if (need_wx) out[1] = gwx;
  if (need_wh) out[2] = gwh.defined() ? gwh : at::zeros_like(wh);
  if (need_b) out[3] = d_params.narrow(0, 0, 4).reshape({-1});
  if (need_p) out[4] = d_params.narrow(0, 4, 3);
  if (need_h0) out[5] = dh_next.defined() ? dh_next : at::zeros(s.state(), h0.options());
  if (need_c0) out[6] = dc;
  return out;
}

// The layer's autograd: forward saves what the schedule's backward reads. `Resolve` picks the
// backend (in backward, from a saved weight, on the device of the call).
template <ResolveBackend Resolve>
class ConvLSTMLayerFunction : public torch::autograd::Function<ConvLSTMLayerFunction<Resolve>> {
 public:
  static variable_list forward(AutogradContext* ctx, PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
    const LayerShape s = check_layer_args(x, steps, weight_x, weight_h, bias, peephole, h0, c0);
    at::AutoDispatchBelowADInplaceOrView guard;  // the schedule below is not itself recorded
    Rollout r = rollout(Resolve(x), x, s, weight_x, weight_h, bias, peephole, h0, c0, /*save=*/true);
    ctx->saved_data["shape"] = c10::List<int64_t>(
        {s.T, s.N, s.Cin, s.C, s.H, s.W, s.kh, s.kw, static_cast<int64_t>(s.state_dtype),
         static_cast<int64_t>(s.dtype), s.seq, static_cast<int64_t>(x.scalar_type())});
    ctx->saved_data["needs"] = c10::List<bool>(
        {x.requires_grad(), weight_x.requires_grad(), weight_h.requires_grad(), requires_grad(bias),
         requires_grad(peephole), requires_grad(h0), requires_grad(c0)});
    // The merged schedule's frames hold x and the h sequence (but its last frame, which no
    // step's convolution sees): neither is saved beside them.
    const bool frames = r.xh.defined();
    variable_list saved = {frames ? at::Tensor() : r.x, r.wx, r.wh, peephole.value_or(at::Tensor()),
                           r.h0, frames ? at::Tensor() : saved_h(r), r.xh};
    saved.insert(saved.end(), r.gates.begin(), r.gates.end());
    saved.insert(saved.end(), r.c_prev.begin(), r.c_prev.end());
    ctx->save_for_backward(saved);
    ctx->set_materialize_grads(false);
    return {r.h_seq, r.h_last, r.c_last};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto dims = ctx->saved_data["shape"].toIntList();
    LayerSaved sv{LayerShape{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6],
                             dims[7], static_cast<at::ScalarType>(dims[8]),
                             static_cast<at::ScalarType>(dims[9]), dims[10] != 0},
                  static_cast<at::ScalarType>(dims[11])};
    const auto need = ctx->saved_data["needs"].toBoolList();
    LayerNeeds needs;
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = need[i];
    const auto saved = ctx->get_saved_variables();
    sv.x = saved[0];
    sv.wx = saved[1];
    sv.wh = saved[2];
    if (saved[3].defined()) sv.peephole = saved[3];
    sv.h0 = saved[4];
    sv.h = saved[5];
    sv.xh = saved[6];
    sv.gates.assign(saved.begin() + 7, saved.begin() + 7 + sv.s.T);
    sv.c_prev.assign(saved.begin() + 7 + sv.s.T, saved.begin() + 7 + 2 * sv.s.T);
    const std::array<at::Tensor, 7> g =
        layer_backward(Resolve(sv.wx), sv, needs, grads[0], grads[1], grads[2]);
    variable_list out(8);  // steps (index 1) has no gradient
    out[0] = g[0];
    for (size_t i = 1; i < g.size(); ++i) out[i + 1] = g[i];
    return once_differentiable(
        std::move(out),
        "pyframepred.ops.convlstm_layer: the fused backward is not differentiable, so second "
        "derivatives (double backward, e.g. a gradient penalty) are not supported; use the "
        "reference modules (fused=False) for that");
  }
};

// The operator without autograd (no input needs a gradient, or below autograd).
template <ResolveBackend Resolve>
op::ConvLSTMLayer::Result layer_forward(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  const LayerShape s = check_layer_args(x, steps, weight_x, weight_h, bias, peephole, h0, c0);
  Rollout r = rollout(Resolve(x), x, s, weight_x, weight_h, bias, peephole, h0, c0, /*save=*/false);
  return {r.h_seq, r.h_last, r.c_last};
}

// convlstm_layer_train: the forward of a training step, returning what backward reads besides
// the arguments (h_0 .. h_{T-2}, the gates and the cell states c_1 .. c_{T-1}) for an autograd
// registered outside C++ (torch.compile). Each in the run layout, as the fake kernel has them.
template <ResolveBackend Resolve>
op::ConvLSTMLayerTrain::Result layer_train(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  const LayerShape s = check_layer_args(x, steps, weight_x, weight_h, bias, peephole, h0, c0);
  const LayerBackend b = Resolve(x);
  Rollout r = rollout(b, x, s, weight_x, weight_h, bias, peephole, h0, c0, /*save=*/true);
  const auto fmt = run_format(b, x, weight_x);
  std::vector<at::Tensor> gates, cells;
  gates.reserve(s.T);
  cells.reserve(s.T - 1);
  for (int64_t t = 0; t < s.T; ++t) {
    gates.push_back(r.gates[t].contiguous(fmt));
    if (t > 0) cells.push_back(r.c_prev[t].contiguous(fmt));
  }
  // h_0 .. h_{T-2} as frames of their own: the output's memory may change before backward.
  const int64_t n = (s.T - 1) * s.N;
  at::Tensor h_prev;
  if (r.xh.defined() || r.h_frames.is_alias_of(r.h_seq)) {
    h_prev = buffer(b, {n, s.C, s.H, s.W}, x.options().dtype(s.dtype).memory_format(fmt));
    if (n > 0) {
      copy_into(b, h_prev,
                r.xh.defined() ? r.xh.narrow(0, s.N, n).narrow(1, s.Cin, s.C) : r.h_frames.narrow(0, 0, n));
    }
  } else {
    h_prev = r.h_frames.narrow(0, 0, n);  // the frames the cell wrote, copied into the output
  }
  return {r.h_seq, r.h_last, r.c_last, h_prev, std::move(gates), std::move(cells)};
}

// convlstm_layer_backward: the schedule's backward (layer_backward) on what convlstm_layer_train
// returned and the call's arguments. Where the forward ran the merged schedule, backward rebuilds
// the frames it convolved from x, h0 and h_prev (convlstm_layer_train does not return them: their
// shape would depend on the schedule's choice, which the fake kernel cannot see). Gradients in the
// layouts op_signatures.h states.
template <ResolveBackend Resolve>
op::ConvLSTMLayerBackward::Result layer_train_backward(
    PYFRAMEPRED_CONVLSTM_LAYER_BACKWARD_PARAMS) {
  const LayerShape s = check_layer_args(x, steps, weight_x, weight_h, bias, peephole, h0, c0);
  constexpr const char* op = "convlstm_layer_backward";
  TORCH_CHECK(static_cast<int64_t>(gates.size()) == s.T &&
                  static_cast<int64_t>(cells.size()) == s.T - 1,
              op, ": expected ", std::to_string(s.T), " gates and ", std::to_string(s.T - 1),
              " cells (convlstm_layer_train's), got ", std::to_string(gates.size()), " and ",
              std::to_string(cells.size()));
  TORCH_CHECK(h_prev.dim() == 4 && h_prev.size(0) == (s.T - 1) * s.N, op,
              ": h_prev must hold the h of steps 0 .. T-2 as frames ((T-1)*N, C, H, W), got shape ",
              shape_str(h_prev.sizes()));
  TORCH_CHECK(output_mask[5] <= defined(h0) && output_mask[6] <= defined(c0) &&
                  output_mask[3] <= defined(bias) && output_mask[4] <= defined(peephole),
              op, ": output_mask asks for the gradient of an absent argument");
  const LayerBackend b = Resolve(x);
  const auto fmt = run_format(b, x, weight_x);
  at::AutoDispatchBelowADInplaceOrView guard;
  LayerSaved sv{s, x.scalar_type()};
  sv.wx = weight_x.contiguous(fmt);
  sv.wh = weight_h.contiguous(fmt);
  sv.peephole = peephole;
  if (defined(h0)) sv.h0 = h0->contiguous(fmt);
  if (merged_conv(b, s, x, step_conv(b, sv.wx, x), sv.wh, h0, fmt).weight.defined()) {
    // The frames (x_t, h_{t-1}) the forward convolved (h_{-1}: h0, or zeros), whose joined weight
    // gradient backward computes in one call per chunk: as many bytes copied as x and the h
    // sequence in the run layout would take.
    sv.xh = buffer(b, {s.T * s.N, s.Cin + s.C, s.H, s.W}, x.options().dtype(s.dtype).memory_format(fmt));
    const at::Tensor x_part = sv.xh.narrow(1, 0, s.Cin);
    copy_into(b, s.seq ? x_part.unflatten(0, {s.T, s.N}) : x_part, x);
    const at::Tensor h_part = sv.xh.narrow(1, s.Cin, s.C);
    if (defined(h0)) {
      h_part.narrow(0, 0, s.N).copy_(*h0);
    } else {
      h_part.narrow(0, 0, s.N).zero_();
    }
    if (s.T > 1) copy_into(b, h_part.narrow(0, s.N, (s.T - 1) * s.N), h_prev);
  } else {
    const at::Tensor x_run = x.scalar_type() == s.dtype ? x : x.to(s.dtype);
    sv.x = s.seq ? time_major(b, x_run, fmt) : x_run.contiguous(fmt);
    sv.h = h_prev.contiguous(fmt);
  }
  sv.gates.assign(gates.begin(), gates.end());
  sv.c_prev.reserve(s.T);
  sv.c_prev.push_back(initial_c(b, s, c0, x, fmt));
  sv.c_prev.insert(sv.c_prev.end(), cells.begin(), cells.end());
  const auto grad = [](const std::optional<at::Tensor>& g) { return g.value_or(at::Tensor()); };
  std::array<at::Tensor, 7> g =
      layer_backward(b, sv, output_mask, grad(grad_h_seq), grad(grad_h_last), grad(grad_c_last));
  // The layouts the fake kernel gives: x's as layer_backward leaves it (time-major frames in the
  // run layout), the states' in the run layout, the weights' in their own memory format.
  const std::array<at::Tensor, 7> args = {x, weight_x, weight_h, bias.value_or(at::Tensor()),
                                          peephole.value_or(at::Tensor()),
                                          h0.value_or(at::Tensor()), c0.value_or(at::Tensor())};
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!output_mask[i]) continue;
    at::Tensor gi = g[i];
    if (!gi.defined()) {  // no gradient came in
      gi = at::zeros(args[i].sizes(), args[i].options());  // laid out below
    }
    if (i == 0) {
      gi = s.seq ? time_major(b, gi, fmt).unflatten(0, {s.T, s.N}) : gi.contiguous(fmt);
    } else if (i == 1 || i == 2) {
      const bool cl = !args[i].is_contiguous() &&
                      args[i].is_contiguous(at::MemoryFormat::ChannelsLast);
      gi = gi.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    } else if (i == 5 || i == 6) {
      gi = gi.contiguous(fmt);
    }
    // A view into a larger result (the peephole's beside the bias's, a weight's part of the
    // joined gradient) becomes a tensor of its own: the results alias nothing, as the fake's.
    if (gi.storage_offset() != 0) gi = gi.clone();
    out.push_back(std::move(gi));
  }
  return out;
}

// The operator whose autograd kernel layer_autograd is (convlstm_layer; the CUDA execution model's
// tests register the schedule under another name).
using LayerHandle = const c10::TypedOperatorHandle<op::ConvLSTMLayer::Sig>& (*)();

// The operator's autograd kernel. Without gradients it calls the operator below autograd, so that
// tracers (torch.compile's inference graphs, dispatch modes) see the one operator, not the steps.
template <ResolveBackend Resolve, LayerHandle Handle = &op::handle<op::ConvLSTMLayer>>
op::ConvLSTMLayer::Result layer_autograd(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  // Refused, not dropped: below autograd (no input requiring a gradient, as under jvp) the
  // tangents would silently come out zero.
  TORCH_CHECK(!(has_tangent(x) || has_tangent(weight_x) || has_tangent(weight_h) ||
                has_tangent(bias) || has_tangent(peephole) || has_tangent(h0) || has_tangent(c0)),
              "pyframepred.ops.convlstm_layer: forward-mode AD (torch.func.jvp, jacfwd, "
              "torch.autograd.forward_ad) is not supported by the fused layer; use the reference "
              "path (fused=False in the modules) for it");
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || weight_x.requires_grad() || weight_h.requires_grad() ||
                     requires_grad(bias) || requires_grad(peephole) || requires_grad(h0) ||
                     requires_grad(c0));
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Handle().call(x, steps, weight_x, weight_h, bias, peephole, h0, c0);
  }
  auto out = ConvLSTMLayerFunction<Resolve>::apply(x, steps, weight_x, weight_h, bias, peephole,
                                                   h0, c0);
  return {out[0], out[1], out[2]};
}

}  // namespace layer
}  // namespace pyframepred
