// The ConvLSTM operators as typed dispatcher handles, for the C++ code that calls them (the
// cell's autograd, the layer operator, the autocast kernels): their C++ signatures in one place.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace pyframepred {

using ConvLSTMGatesForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool);
using ConvLSTMGatesBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, bool);
using ConvLSTMLayerSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

// pyframepred::convlstm_gates_forward(x_gates, h_gates, c_prev, bias, peephole, save_gates)
inline const c10::TypedOperatorHandle<ConvLSTMGatesForwardSig>& convlstm_gates_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyframepred::convlstm_gates_forward", "")
                             .typed<ConvLSTMGatesForwardSig>();
  return op;
}

// pyframepred::convlstm_gates_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads)
inline const c10::TypedOperatorHandle<ConvLSTMGatesBackwardSig>& convlstm_gates_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyframepred::convlstm_gates_backward", "")
                             .typed<ConvLSTMGatesBackwardSig>();
  return op;
}

// pyframepred::convlstm_layer(x, steps, weight_x, weight_h, bias, peephole, h0, c0)
inline const c10::TypedOperatorHandle<ConvLSTMLayerSig>& convlstm_layer_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyframepred::convlstm_layer", "")
                             .typed<ConvLSTMLayerSig>();
  return op;
}

}  // namespace pyframepred
