// Autograd of the fused gradient difference loss, registered in C++ (TORCH_LIBRARY_IMPL ...
// Autograd) like the ConvLSTM cell's, so that LibTorch users get gradients too and a call from
// Python goes straight to the kernels. Backward keeps nothing but pred and target; it is not
// differentiable (under create_graph its results raise if differentiated again).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "autograd_utils.h"

namespace pyframepred {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                       const at::Tensor&, double, int64_t, bool);

class GdlLoss : public torch::autograd::Function<GdlLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target,
                            double alpha, int64_t reduction) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pyframepred::gdl_loss_forward", "")
                         .typed<ForwardSig>();
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({pred, target});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(pred, target, alpha, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("pyframepred::gdl_loss_backward", "")
                         .typed<BackwardSig>();
    const bool need_pred = ctx->needs_input_grad(0), need_target = ctx->needs_input_grad(1);
    variable_list out(4);
    if (!(need_pred || need_target) || !grads[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_pred, grad_target;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_pred, grad_target) =
          op.call(grads[0], saved[0], saved[1], ctx->saved_data["alpha"].toDouble(),
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

at::Tensor gdl_loss_forward_autograd(const at::Tensor& pred, const at::Tensor& target,
                                     double alpha, int64_t reduction) {
  return GdlLoss::apply(pred, target, alpha, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyframepred, Autograd, m) {
  m.impl("gdl_loss_forward", &gdl_loss_forward_autograd);
}

}  // namespace pyframepred
