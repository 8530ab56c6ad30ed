// Autograd of the two convolution operators the ConvLSTM layer is built from, conv2d_same and
// conv2d_weight_grad, registered in C++ so Python and LibTorch callers can differentiate them.
// Without it a call on tensors that require grad left outputs whose gradients were silently
// missing, or, where the CPU kernel fell back to ATen's convolution, present: it depended on the
// channel count.
//
// Both operators are bilinear, and their derivatives are the two operators again, so they are
// differentiable to any order (a backward under create_graph records these same operators):
//   y = conv2d_same(x, w)               dx = conv2d_same(dy, flip(w)^T)   dw = conv2d_weight_grad(dy, x)
//   g = conv2d_weight_grad(dy, x)       d(dy) = conv2d_same(x, G)         dx = conv2d_same(dy, flip(G)^T)
// where flip(w)^T is w flipped in both spatial dims with its two channel dims swapped: the
// stride-1 'same' convolution's data gradient is the convolution with that weight (odd kernels,
// so the padding is symmetric).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_utils.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor conv2d_same(const at::Tensor& input, const at::Tensor& weight) {
  return op::handle<op::Conv2dSame>().call(input, weight);
}

at::Tensor conv2d_weight_grad(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh,
                              int64_t kw) {
  return op::handle<op::Conv2dWeightGrad>().call(grad_out, input, kh, kw);
}

class Conv2dSameFunction : public torch::autograd::Function<Conv2dSameFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight) {
    ctx->save_for_backward({input, weight});
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_same(input, weight);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& dy = grads[0];
    variable_list out(2);
    if (!dy.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1];
    if (ctx->needs_input_grad(0)) out[0] = conv2d_same(dy, flipped_transposed(weight));
    if (ctx->needs_input_grad(1)) out[1] = conv2d_weight_grad(dy, input, weight.size(2), weight.size(3));
    return out;
  }
};

class Conv2dWeightGradFunction : public torch::autograd::Function<Conv2dWeightGradFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out,
                            const at::Tensor& input, int64_t kh, int64_t kw) {
    ctx->save_for_backward({grad_out, input});
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_weight_grad(grad_out, input, kh, kw);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];  // (C_out, C_in, kh, kw), the weight gradient's gradient
    variable_list out(4);
    if (!g.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad_out = saved[0], &input = saved[1];
    const at::Tensor weight = g.contiguous(input.suggest_memory_format());
    if (ctx->needs_input_grad(0)) out[0] = conv2d_same(input, weight);
    if (ctx->needs_input_grad(1)) out[1] = conv2d_same(grad_out, flipped_transposed(weight));
    return out;
  }
};

at::Tensor conv2d_same_autograd(PYFRAMEPRED_CONV2D_SAME_PARAMS) {
  return Conv2dSameFunction::apply(input, weight);
}

at::Tensor conv2d_weight_grad_autograd(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  return Conv2dWeightGradFunction::apply(grad_out, input, kh, kw);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyframepred, Autograd, m) {
  m.impl(op::Conv2dSame::kName, &conv2d_same_autograd);
  m.impl(op::Conv2dWeightGrad::kName, &conv2d_weight_grad_autograd);
}

}  // namespace pyframepred
