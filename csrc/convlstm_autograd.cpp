// Autograd of the fused ConvLSTM cell, registered in C++ (TORCH_LIBRARY_IMPL ... Autograd) so a
// call from Python or LibTorch goes straight to the kernels without a Python autograd layer.
//
// Backward keeps only the activated gates (saved by the forward kernel when save_gates) and
// c_prev; the gate-input gradient is one tensor shared by x_gates and h_gates. The backward kernel
// is not differentiable: under create_graph its results raise if differentiated again.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "autograd_utils.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->requires_grad();
}

class ConvLSTMGates : public torch::autograd::Function<ConvLSTMGates> {
 public:
  static variable_list forward(AutogradContext* ctx,
                               PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
    const auto& gates_forward = op::handle<op::ConvLSTMGatesForward>();
    ctx->saved_data["needs"] = c10::List<bool>(
        {x_gates.requires_grad(), requires_grad(h_gates), c_prev.requires_grad(),
         requires_grad(bias), requires_grad(peephole)});
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [h, c, gates] = gates_forward.call(x_gates, h_gates, c_prev, bias, peephole, save_gates);
    ctx->save_for_backward({gates, c_prev, peephole.value_or(at::Tensor())});
    ctx->mark_non_differentiable({gates});
    ctx->set_materialize_grads(false);
    return {h, c, gates};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& gates_backward = op::handle<op::ConvLSTMGatesBackward>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& gates = saved[0];
    const at::Tensor& c_prev = saved[1];
    std::optional<at::Tensor> peephole;
    if (saved[2].defined()) peephole = saved[2];
    TORCH_CHECK(gates.sym_numel() != 0 || c_prev.sym_numel() == 0,
                "convlstm_gates_forward was called with save_gates=False, so it kept nothing for "
                "backward; call pyframepred.ops.convlstm_gates instead");
    at::Tensor grad_h = grads[0], grad_c = grads[1];
    if (!grad_h.defined() && !grad_c.defined()) {
      return variable_list(6);
    }
    // An output that received no gradient contributes zero: an expanded scalar costs no memory.
    if (!grad_h.defined()) grad_h = at::zeros({}, gates.options()).expand_symint(c_prev.sym_sizes());
    if (!grad_c.defined()) grad_c = at::zeros({}, c_prev.options()).expand_symint(c_prev.sym_sizes());
    const auto needs = ctx->saved_data["needs"].toBoolList();
    const bool param_grads = needs[3] || needs[4];
    at::Tensor grad_gates, grad_c_prev, grad_params;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_gates, grad_c_prev, grad_params) =
          gates_backward.call(grad_h, grad_c, gates, c_prev, peephole, param_grads);
    }
    variable_list out(6);
    if (needs[0]) out[0] = grad_gates;
    if (needs[1]) out[1] = grad_gates;
    if (needs[2]) out[2] = grad_c_prev;
    if (needs[3]) out[3] = grad_params.narrow(0, 0, 4).reshape({-1});
    if (needs[4]) out[4] = grad_params.narrow(0, 4, 3);
    return once_differentiable(
        std::move(out),
        "pyframepred.ops.convlstm_gates: the fused backward is not differentiable, so second "
        "derivatives (double backward, e.g. a gradient penalty) are not supported; use the "
        "reference op (pyframepred.reference.convlstm_gates, or fused=False in the modules) for "
        "that");
  }
};

op::ConvLSTMGatesForward::Result convlstm_gates_forward_autograd(
    PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  auto out = ConvLSTMGates::apply(x_gates, h_gates, c_prev, bias, peephole, save_gates);
  return {out[0], out[1], out[2]};
}

// convlstm_gates: the forward op, saving the gates only when backward can be called.
op::ConvLSTMGates::Result convlstm_gates(PYFRAMEPRED_CONVLSTM_GATES_INPUTS()) {
  const bool save = at::GradMode::is_enabled() &&
                    (x_gates.requires_grad() || requires_grad(h_gates) || c_prev.requires_grad() ||
                     requires_grad(bias) || requires_grad(peephole));
  auto [h, c, gates] = op::handle<op::ConvLSTMGatesForward>().call(x_gates, h_gates, c_prev, bias,
                                                                   peephole, save);
  return {h, c};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyframepred, Autograd, m) {
  m.impl(op::ConvLSTMGatesForward::kName, &convlstm_gates_forward_autograd);
}

TORCH_LIBRARY_IMPL(pyframepred, CompositeImplicitAutograd, m) {
  m.impl(op::ConvLSTMGates::kName, &convlstm_gates);
}

}  // namespace pyframepred
