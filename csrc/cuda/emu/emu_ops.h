// Entry points of the emulated-kernel test extension (registered in emu_ops.cpp). The ones that
// stand for an operator take its parameters (include/pyframepred/op_signatures.h).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "convlstm_host.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace cuda_emu {

op::ConvLSTMGatesForward::Sig convlstm_forward;
// The same into the caller's h_out where it fits the kernel, as the CUDA launcher the ConvLSTM
// layer calls (GatesForwardInto, convlstm_host.h).
GatesForwardInto convlstm_forward_into;

// grad_gates, grad_c_prev and the kernel's per-block partial sums of the parameter gradients,
// unfinished, as CUDA's GatesBackwardPartial (convlstm_host.h).
GatesBackwardPartial convlstm_backward_partial;
// grad_gates, grad_c_prev, grad_params and the kernel's per-block partial sums.
using ConvLSTMBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
ConvLSTMBackwardResult convlstm_backward(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS);

op::GdlLossForward::Sig gdl_forward;
// The forward kernel's per-group partial sums (before the finish kernel), shape (B, groups).
at::Tensor gdl_partials(const at::Tensor& pred, const at::Tensor& target, double alpha);
// The finish kernel alone: out[o] = sum(partial[o, :]) / divisor.
at::Tensor gdl_finish(const at::Tensor& partial, double divisor, at::ScalarType out_dtype);
op::GdlLossBackward::Sig gdl_backward;

}  // namespace cuda_emu
}  // namespace pyframepred
