// Entry points of the emulated-kernel test extension (registered in emu_ops.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pyframepred {
namespace cuda_emu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> convlstm_forward(
    const at::Tensor& x_gates, const std::optional<at::Tensor>& h_gates, const at::Tensor& c_prev,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& peephole,
    bool save_gates);

// grad_gates, grad_c_prev, grad_params and the kernel's per-block partial sums.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> convlstm_backward(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
    const at::Tensor& c_prev, const std::optional<at::Tensor>& peephole, bool param_grads);

at::Tensor gdl_forward(const at::Tensor& pred, const at::Tensor& target, double alpha,
                       int64_t reduction);
// The forward kernel's per-group partial sums (before the finish kernel), shape (B, groups).
at::Tensor gdl_partials(const at::Tensor& pred, const at::Tensor& target, double alpha);
// The finish kernel alone: out[o] = sum(partial[o, :]) / divisor.
at::Tensor gdl_finish(const at::Tensor& partial, double divisor, at::ScalarType out_dtype);
std::tuple<at::Tensor, at::Tensor> gdl_backward(const at::Tensor& grad_out, const at::Tensor& pred,
                                                const at::Tensor& target, double alpha,
                                                int64_t reduction, bool target_grad);

}  // namespace cuda_emu
}  // namespace pyframepred
