// CUDA launchers of the fused ConvLSTM cell: device guard, current stream, dtype dispatch and the
// launch-error check. The kernels are in convlstm_kernels.cuh, the launch configuration (grid,
// block, variant, index width) in convlstm_launch.cuh, shared with the CPU execution model that
// runs them in the tests.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "convlstm_host.h"
#include "convlstm_launch.cuh"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace cuda {
namespace {

const auto kLaunchCheck = [] { C10_CUDA_KERNEL_LAUNCH_CHECK(); };

op::ConvLSTMGatesForward::Result convlstm_gates_forward_into_cuda(
    PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS, const at::Tensor& h_out) {
  auto p = plan_convlstm_forward(x_gates, h_gates, c_prev, bias, peephole, save_gates, h_out);
  c10::cuda::CUDAGuard guard(x_gates.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_gates.scalar_type(),
                                  "convlstm_gates_forward_cuda", [&] {
    dispatch_state_type<scalar_t>(c_prev.scalar_type(), [&](auto state_tag) {
      using state_t = typename decltype(state_tag)::type;
      convlstm::launch_forward<scalar_t, state_t>(p, save_gates, stream, kLaunchCheck);
    });
  });
  return {p.h, p.c, p.gates};
}

op::ConvLSTMGatesForward::Result convlstm_gates_forward_cuda(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  return convlstm_gates_forward_into_cuda(x_gates, h_gates, c_prev, bias, peephole, save_gates,
                                          at::Tensor());
}

// grad_gates, grad_c_prev and the kernel's unfinished partial sums of the parameter gradients
// (GatesBackwardPartial, convlstm_host.h).
op::ConvLSTMGatesBackward::Result convlstm_gates_backward_partial_cuda(
    PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  auto p = plan_convlstm_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  c10::cuda::CUDAGuard guard(gates.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                  "convlstm_gates_backward_cuda", [&] {
    dispatch_state_type<scalar_t>(c_prev.scalar_type(), [&](auto state_tag) {
      using state_t = typename decltype(state_tag)::type;
      partial = convlstm::launch_backward<scalar_t, state_t>(p, param_grads, stream, kLaunchCheck);
    });
  });
  return {p.grad_gates, p.grad_c_prev, partial};
}

op::ConvLSTMGatesBackward::Result convlstm_gates_backward_cuda(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  auto [grad_gates, grad_c_prev, partial] = convlstm_gates_backward_partial_cuda(
      grad_h, grad_c, gates, c_prev, peephole, param_grads);
  at::Tensor grad_params = param_grads ? finish_param_grads(partial, c_prev.scalar_type())
                                       : at::empty({0}, c_prev.options());
  return {grad_gates, grad_c_prev, grad_params};
}

// The ConvLSTM layer's cell forward into its h sequence (GatesForwardInto, convlstm_host.h).
// Its cell backward with the parameter gradients left as partial sums (GatesBackwardPartial).
const bool kCudaLayerKernels = [] {
  gates_forward_into(c10::DeviceType::CUDA) = &convlstm_gates_forward_into_cuda;
  gates_backward_partial(c10::DeviceType::CUDA) = &convlstm_gates_backward_partial_cuda;
  return true;
}();

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(pyframepred, CUDA, m) {
  m.impl(op::ConvLSTMGatesForward::kName, &cuda::convlstm_gates_forward_cuda);
  m.impl(op::ConvLSTMGatesBackward::kName, &cuda::convlstm_gates_backward_cuda);
}

}  // namespace pyframepred
