// The ConvLSTM layer operator (csrc/convlstm_layer.cpp): one layer over a whole sequence.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pyframepred {

// x: (T*N, C_in, H, W), the frames of all `steps` steps, time-major; weight_x: (4C, C_in, kh, kw)
// and weight_h: (4C, C, kh, kw), odd kernels with 'same' padding, no convolution bias; bias (4C,)
// and peephole (3, C) as in convlstm_gates; h0, c0: (N, C, H, W) or absent (zeros).
// Returns h of every step (T*N, C, H, W), and the last step's h and c.
std::tuple<at::Tensor, at::Tensor, at::Tensor> convlstm_layer_forward(
    const at::Tensor& x, int64_t steps, const at::Tensor& weight_x, const at::Tensor& weight_h,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& peephole,
    const std::optional<at::Tensor>& h0, const std::optional<at::Tensor>& c0);

}  // namespace pyframepred
