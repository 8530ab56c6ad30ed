// Host-side helpers of the fused ConvLSTM cell shared by the CPU and CUDA implementations:
// argument checks with clear messages (on top of the shared ones of checks.h), and the
// (N, C, P = H*W) strided view the kernels iterate.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <type_traits>

#include "buffer_pool.h"
#include "checks.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {

// A 4-d tensor (N, K, H, W) seen as (N, K, P = H*W) with one stride per dimension. Contiguous
// NCHW, channels_last and expanded (stride-0) tensors all have such a view; anything else is
// made contiguous first (see `as_view3`).
struct View3 {
  int64_t sN, sC, sP;
};

inline bool has_view3(const at::Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  return H == 1 || W == 1 || t.stride(2) == W * t.stride(3);
}

inline View3 view3_strides(const at::Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  int64_t sP = 1;
  if (W > 1) {
    sP = t.stride(3);
  } else if (H > 1) {
    sP = t.stride(2);
  }
  return View3{t.stride(0), t.stride(1), sP};
}

// Returns `t` itself when it has a (N, K, P) view, otherwise a contiguous copy.
inline at::Tensor as_view3(const at::Tensor& t) {
  return has_view3(t) ? t : t.contiguous();
}

// True when the tensor's memory runs channel-fastest (channels_last), which decides the kernels'
// iteration order (results never depend on it).
inline bool channels_fastest(const at::Tensor& t) {
  const View3 v = view3_strides(t);
  const int64_t P = t.size(2) * t.size(3);
  return P > 1 && t.size(1) > 1 && v.sC == 1 && v.sP != 1;
}

inline bool is_reduced_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}

// Mixed precision: the gate tensors (and h) may be float16/bfloat16 while the cell state c and the
// per-channel parameters (bias, peephole) are float32 -- the state then accumulates in float32 and
// no copy up-casts the gates. Otherwise every tensor has one dtype.
inline bool valid_state_dtype(at::ScalarType gate, at::ScalarType state) {
  return state == gate || (is_reduced_float(gate) && state == at::kFloat);
}

// `state` (named `name`) is a cell-state-typed tensor: c_prev, grad_c, bias, peephole. Its dtype
// must be the gates' or, with float16/bfloat16 gates, float32.
inline void check_state_dtype(const at::Tensor& t, at::ScalarType gate, const char* op,
                              const char* name, const char* gate_name) {
  check_float_tensor(t, op, name);
  TORCH_CHECK(valid_state_dtype(gate, t.scalar_type()), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", gate_name, " has dtype ", gate,
              "; the cell state and parameters take the gates' dtype, or float32 with "
              "float16/bfloat16 gates (mixed precision)");
}

// Checks the forward arguments and returns C (the hidden channel count).
inline int64_t check_convlstm_forward_args(PYFRAMEPRED_CONVLSTM_GATES_INPUTS()) {
  constexpr const char* op = "convlstm_gates";
  check_float_tensor(x_gates, op, "x_gates");
  TORCH_CHECK(x_gates.dim() == 4, op, ": x_gates must be 4-d (N, 4*C, H, W), got shape ",
              shape_str(x_gates.sizes()));
  TORCH_CHECK(x_gates.size(1) % 4 == 0 && x_gates.size(1) > 0, op,
              ": x_gates must have 4*C channels (gates i, f, g, o), got ",
              std::to_string(x_gates.size(1)));
  const int64_t N = x_gates.size(0), C = x_gates.size(1) / 4;
  const int64_t H = x_gates.size(2), W = x_gates.size(3);
  if (h_gates.has_value()) {
    check_like(*h_gates, x_gates, op, "h_gates", "x_gates");
    check_shape(*h_gates, x_gates.sizes(), op, "h_gates", "x_gates.shape");
  }
  check_state_dtype(c_prev, x_gates.scalar_type(), op, "c_prev", "x_gates");
  check_device(c_prev, x_gates, op, "c_prev", "x_gates");
  check_shape(c_prev, {N, C, H, W}, op, "c_prev", "(N, C, H, W)");
  if (bias.has_value()) {
    check_like(*bias, c_prev, op, "bias", "c_prev");
    check_shape(*bias, {4 * C}, op, "bias", "(4*C,)");
  }
  if (peephole.has_value()) {
    check_like(*peephole, c_prev, op, "peephole", "c_prev");
    check_shape(*peephole, {3, C}, op, "peephole", "(3, C)");
  }
  return C;
}

inline int64_t check_convlstm_backward_args(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                            const at::Tensor& gates, const at::Tensor& c_prev,
                                            const std::optional<at::Tensor>& peephole) {
  constexpr const char* op = "convlstm_gates_backward";
  check_float_tensor(gates, op, "gates");
  TORCH_CHECK(gates.dim() == 4 && gates.size(1) % 4 == 0 && gates.size(1) > 0, op,
              ": gates must be (N, 4*C, H, W), got ", shape_str(gates.sizes()));
  const int64_t N = gates.size(0), C = gates.size(1) / 4;
  const int64_t H = gates.size(2), W = gates.size(3);
  check_state_dtype(c_prev, gates.scalar_type(), op, "c_prev", "gates");
  check_device(c_prev, gates, op, "c_prev", "gates");
  check_shape(c_prev, {N, C, H, W}, op, "c_prev", "(N, C, H, W)");
  check_like(grad_h, gates, op, "grad_h", "gates");
  check_shape(grad_h, {N, C, H, W}, op, "grad_h", "(N, C, H, W)");
  check_like(grad_c, c_prev, op, "grad_c", "c_prev");
  check_shape(grad_c, {N, C, H, W}, op, "grad_c", "(N, C, H, W)");
  if (peephole.has_value()) {
    check_like(*peephole, c_prev, op, "peephole", "c_prev");
    check_shape(*peephole, {3, C}, op, "peephole", "(3, C)");
  }
  return C;
}

}  // namespace pyframepred

namespace pyframepred {

// Inputs of a kernel call after checking: every 4-d tensor has a (N, K, P) view, small
// parameter vectors are contiguous, and outputs are allocated in the iteration's memory format.
struct ConvLSTMForwardPlan {
  int64_t N, C, H, W;
  bool cl;  // iterate channels-fastest
  at::Tensor x_gates, h_gates, c_prev, bias, peephole;  // h_gates/bias/peephole may be undefined
  at::Tensor h, c, gates;                              // gates undefined unless saved
};

// Takes the operator's arguments (convlstm_gates_forward, op_signatures.h), and optionally the
// tensor h is to be written into (see GatesForwardInto); one that does not fit the h the kernel
// would allocate (shape, dtype, device, memory layout) is not used. `strided`: the kernel takes
// any h_out with a (N, C, P) view (the CPU's; e.g. a channel slice of channels_last frames),
// not only one contiguous in the iteration's memory format.
inline ConvLSTMForwardPlan plan_convlstm_forward(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS,
                                                 const at::Tensor& h_out = at::Tensor(),
                                                 bool strided = false) {
  ConvLSTMForwardPlan p;
  p.C = check_convlstm_forward_args(x_gates, h_gates, c_prev, bias, peephole);
  p.N = x_gates.size(0);
  p.H = x_gates.size(2);
  p.W = x_gates.size(3);
  p.x_gates = as_view3(x_gates);
  p.cl = channels_fastest(p.x_gates);
  if (h_gates.has_value()) p.h_gates = as_view3(*h_gates);
  p.c_prev = as_view3(c_prev);
  if (bias.has_value()) p.bias = bias->contiguous();
  if (peephole.has_value()) p.peephole = peephole->contiguous();
  const auto fmt = p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto opts = x_gates.options().memory_format(fmt);
  const bool into = h_out.defined() && h_out.sizes() == at::IntArrayRef({p.N, p.C, p.H, p.W}) &&
                    h_out.dtype() == x_gates.dtype() && h_out.device() == x_gates.device() &&
                    (h_out.is_contiguous(fmt) || (strided && has_view3(h_out)));
  p.h = into ? h_out : cell_buffer({p.N, p.C, p.H, p.W}, opts);
  p.c = cell_buffer({p.N, p.C, p.H, p.W}, opts.dtype(c_prev.scalar_type()));
  p.gates = save_gates ? cell_buffer({p.N, 4 * p.C, p.H, p.W}, opts) : at::empty({0}, x_gates.options());
  return p;
}

// The fused cell's forward with h written into a tensor the caller owns: the ConvLSTM layer
// (convlstm_layer.cpp) passes each step's frame of its h sequence, so the kernel writes h there
// instead of into a buffer that would then be copied. Not an operator: its result aliases the
// caller's tensor, which an operator's result may not. Registered per device type by the CPU
// (cpu/dispatch.cpp) and CUDA (cuda/convlstm_cuda.cu) sources; null where none is. The h returned
// is `h_out` itself when the kernel could use it (see plan_convlstm_forward), a tensor of its own
// otherwise.
using GatesForwardInto = op::ConvLSTMGatesForward::Result(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS,
                                                          const at::Tensor& h_out);

inline GatesForwardInto*& gates_forward_into(c10::DeviceType device) {
  static GatesForwardInto* kernels[static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)] = {};
  return kernels[static_cast<int>(device)];
}

// The fused cell's backward as the ConvLSTM layer calls it on devices where the parameter
// gradients come from a second pass over per-block partial sums (CUDA): grad_gates, grad_c_prev
// and, with param_grads, those partial sums (R, 7, C) in the accumulation type, unfinished. The
// layer finishes all steps' sums in one reduction (finish_param_grads) instead of a reduction and
// an addition per step. Registered by cuda/convlstm_cuda.cu; null where none is (the layer then
// calls the operator).
using GatesBackwardPartial = op::ConvLSTMGatesBackward::Result(
    PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS);

inline GatesBackwardPartial*& gates_backward_partial(c10::DeviceType device) {
  static GatesBackwardPartial* kernels[static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)] = {};
  return kernels[static_cast<int>(device)];
}

// The fused cell's backward for the gradient grad_h + grad_h_add of h, the sum formed as the
// kernel reads its inputs: the ConvLSTM layer's where the hidden convolution's data gradient comes
// from a convolution that cannot add the sequence's gradient to its result as it writes it (ATen's,
// e.g. bfloat16 at the CPU's amx level), instead of an add_ over the state (0.6 ms a step at
// (4, 64, 64, 64) in bfloat16 on 2 Xeon cores, for a kernel that reads grad_h anyway).
// grad_h_add has grad_h's shape, dtype and device, in any layout with an (N, C, P) view (read at
// full speed in grad_h's layout, or expanded: one value per image). Registered by the CPU sources
// (cpu/dispatch.cpp); null where none is (the layer then adds).
using GatesBackwardAdd = op::ConvLSTMGatesBackward::Result(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS,
                                                           const at::Tensor& grad_h_add);

inline GatesBackwardAdd*& gates_backward_add(c10::DeviceType device) {
  static GatesBackwardAdd* kernels[static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)] = {};
  return kernels[static_cast<int>(device)];
}

// The ConvLSTM layer's copy between planar and interleaved frames (the operator _copy_frames,
// op_signatures.h): registered for the CPU (cpu/dispatch.cpp, at the ISA level in use); null
// elsewhere, where the layer copies with copy_.
inline op::CopyFrames::Sig*& frames_copy_kernel(c10::DeviceType device) {
  static op::CopyFrames::Sig* kernels[static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)] = {};
  return kernels[static_cast<int>(device)];
}

struct ConvLSTMBackwardPlan {
  int64_t N, C, H, W;
  bool cl;
  bool param_grads;
  at::Tensor grad_h, grad_c, gates, c_prev, peephole;
  at::Tensor grad_gates, grad_c_prev;
};

// Takes the operator's arguments (convlstm_gates_backward, op_signatures.h).
inline ConvLSTMBackwardPlan plan_convlstm_backward(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  ConvLSTMBackwardPlan p;
  p.C = check_convlstm_backward_args(grad_h, grad_c, gates, c_prev, peephole);
  p.N = gates.size(0);
  p.H = gates.size(2);
  p.W = gates.size(3);
  p.param_grads = param_grads;
  p.gates = as_view3(gates);
  p.cl = channels_fastest(p.gates);
  p.grad_h = as_view3(grad_h);
  p.grad_c = as_view3(grad_c);
  p.c_prev = as_view3(c_prev);
  if (peephole.has_value()) p.peephole = peephole->contiguous();
  const auto fmt = p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto opts = gates.options().memory_format(fmt);
  p.grad_gates = cell_buffer({p.N, 4 * p.C, p.H, p.W}, opts);
  p.grad_c_prev = cell_buffer({p.N, p.C, p.H, p.W}, opts.dtype(c_prev.scalar_type()));
  return p;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<state_t>{}) with the cell state's C++ type for gates of type gate_t: gate_t
// itself, or float for float16/bfloat16 gates with a float32 state (the combinations the checks
// above admit). The two types share one accumulation type.
template <typename gate_t, typename F>
inline void dispatch_state_type(at::ScalarType state, F&& f) {
  if constexpr (std::is_same_v<gate_t, at::Half> || std::is_same_v<gate_t, at::BFloat16>) {
    if (state == at::kFloat) {
      f(TypeTag<float>{});
      return;
    }
  }
  f(TypeTag<gate_t>{});
}

// Rows of per-channel partial sums (R, 7, C) -> grad_params (7, C): rows 0-3 are the bias
// gradient (gates i, f, g, o), rows 4-6 the peephole gradient (i, f, o; zero without peephole).
inline at::Tensor finish_param_grads(const at::Tensor& partial, at::ScalarType dtype) {
  return partial.sum(0).to(dtype);  // fixed reduction order: deterministic
}

}  // namespace pyframepred
