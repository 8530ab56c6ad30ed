// Autograd of the fused gradient difference loss, registered in C++ (TORCH_LIBRARY_IMPL ...
// Autograd) like the ConvLSTM cell's, so that LibTorch users get gradients too and a call from
// Python goes straight to the kernels. Backward keeps nothing but pred and target; it is not
// differentiable (under create_graph its results raise if differentiated again).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "autograd_utils.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class GdlLoss : public torch::autograd::Function<GdlLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS) {
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({pred, target});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op::handle<op::GdlLossForward>().call(pred, target, alpha, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool need_pred = ctx->needs_input_grad(0), need_target = ctx->needs_input_grad(1);
    variable_list out(4);
    if (!(need_pred || need_target) || !grads[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_pred, grad_target;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_pred, grad_target) =
          op::handle<op::GdlLossBackward>().call(grads[0], saved[0], saved[1],
                                                 ctx->saved_data["alpha"].toDouble(),
                                                 ctx->saved_data["reduction"].toInt(), need_target);
    }
    if (need_pred) out[0] = grad_pred;
    if (need_target) out[1] = grad_target;
    return once_differentiable(
        std::move(out),
        "pyframepred.ops.gdl_loss: the fused backward is not differentiable, so second "
        "derivatives (double backward) are not supported; use pyframepred.reference.gdl_loss "
        "(or GDLLoss(fused=False)) for that");
  }
};

op::GdlLossForward::Result gdl_loss_forward_autograd(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS) {
  return GdlLoss::apply(pred, target, alpha, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyframepred, Autograd, m) {
  m.impl(op::GdlLossForward::kName, &gdl_loss_forward_autograd);
}

}  // namespace pyframepred
