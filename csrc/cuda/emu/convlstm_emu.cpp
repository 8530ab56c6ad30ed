// The ConvLSTM kernels run on the CPU execution model: the launch sequence of the real launcher
// (convlstm_launch.cuh) with PF_LAUNCH mapped to the emulated launch. Fresh outputs are filled
// with NaN first, so an element a kernel fails to write shows up in the comparison.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <limits>

#include "../convlstm_launch.cuh"
#include "convlstm_host.h"
#include "emu_ops.h"

namespace pyframepred {
namespace cuda_emu {

namespace {
const auto kNoCheck = [] {};

void poison(const at::Tensor& t) {
  if (t.defined() && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
}
}  // namespace

op::ConvLSTMGatesForward::Result convlstm_forward(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  return convlstm_forward_into(x_gates, h_gates, c_prev, bias, peephole, save_gates, at::Tensor());
}

op::ConvLSTMGatesForward::Result convlstm_forward_into(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS,
                                                       const at::Tensor& h_out) {
  auto p = plan_convlstm_forward(x_gates, h_gates, c_prev, bias, peephole, save_gates, h_out);
  poison(p.h);
  poison(p.c);
  poison(p.gates);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_gates.scalar_type(),
                                  "convlstm_forward_emu", [&] {
    dispatch_state_type<scalar_t>(c_prev.scalar_type(), [&](auto state_tag) {
      using state_t = typename decltype(state_tag)::type;
      cuda::convlstm::launch_forward<scalar_t, state_t>(p, save_gates, nullptr, kNoCheck);
    });
  });
  return {p.h, p.c, p.gates};
}

op::ConvLSTMGatesBackward::Result convlstm_backward_partial(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  auto p = plan_convlstm_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  poison(p.grad_gates);
  poison(p.grad_c_prev);
  at::Tensor partial;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                  "convlstm_backward_emu", [&] {
    dispatch_state_type<scalar_t>(c_prev.scalar_type(), [&](auto state_tag) {
      using state_t = typename decltype(state_tag)::type;
      partial = cuda::convlstm::launch_backward<scalar_t, state_t>(p, param_grads, nullptr, kNoCheck);
    });
  });
  return {p.grad_gates, p.grad_c_prev, partial};
}

ConvLSTMBackwardResult convlstm_backward(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  auto [grad_gates, grad_c_prev, partial] =
      convlstm_backward_partial(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  at::Tensor grad_params = param_grads ? finish_param_grads(partial, c_prev.scalar_type())
                                       : at::empty({0}, c_prev.options());
  if (!partial.defined()) partial = at::empty({0}, gates.options());
  return {grad_gates, grad_c_prev, grad_params, partial};
}

}  // namespace cuda_emu
}  // namespace pyframepred
