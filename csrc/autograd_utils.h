// Helpers shared by the C++ autograd of the fused ops and of the convolutions.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <memory>
#include <string>
#include <utility>

namespace pyframepred {

// flip(w)^T: (C_out, C_in, kh, kw) -> (C_in, C_out, kh, kw), flipped in kh and kw, contiguous in
// w's memory format. The stride-1 'same' convolution's data gradient is the convolution of the
// output's gradient with it (odd kernels: symmetric padding).
inline at::Tensor flipped_transposed(const at::Tensor& w) {
  return w.flip({2, 3}).transpose(0, 1).contiguous(w.suggest_memory_format());
}

// The fused backward kernels are not themselves differentiable. Under create_graph=True (grad
// mode on inside backward) their results would otherwise enter the new graph as constants, and
// a second derivative -- a gradient penalty, a Hessian-vector product -- would come out silently
// wrong. Like Python's @once_differentiable, route them through an error node instead: using
// them is fine, differentiating them again raises `message`.
inline torch::autograd::variable_list once_differentiable(torch::autograd::variable_list grads,
                                                          const std::string& message) {
  if (!at::GradMode::is_enabled()) return grads;
  for (auto& g : grads) {
    if (g.defined()) g = g.detach().requires_grad_(true);
  }
  auto error = std::make_shared<torch::autograd::DelayedError>(message,
                                                               static_cast<int64_t>(grads.size()));
  return (*error)(std::move(grads));
}

}  // namespace pyframepred
