// CUDA launchers of the fused gradient difference loss: device guard, current stream, dtype
// dispatch and the launch-error check. The kernels are in gdl_kernels.cuh, the launch
// configuration and sequence in gdl_launch.cuh, shared with the CPU execution model that runs them
// in the tests.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "gdl.h"
#include "gdl_host.h"
#include "include/pyframepred/op_signatures.h"
#include "gdl_launch.cuh"

namespace pyframepred {
namespace cuda {
namespace {

const auto kLaunchCheck = [] { C10_CUDA_KERNEL_LAUNCH_CHECK(); };

op::GdlLossForward::Result gdl_loss_forward_cuda(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS) {
  // Messages name the public function (pyframepred.ops.gdl_loss, pyframepred::gdl_loss).
  const GdlPlan p = gdl::plan(pred, target, alpha, reduction, "gdl_loss");
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor out = gdl_forward_output(pred, reduction);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(),
                                  "gdl_loss_forward_cuda", [&] {
    gdl::launch_forward<scalar_t>(p, alpha, reduction, out, stream, kLaunchCheck);
  });
  return out;
}

op::GdlLossBackward::Result gdl_loss_backward_cuda(PYFRAMEPRED_GDL_LOSS_BACKWARD_PARAMS) {
  constexpr const char* name = op::GdlLossBackward::kName;
  const GdlPlan p = gdl::plan(pred, target, alpha, reduction, name);
  const c10::cuda::CUDAGuard guard(pred.device());
  const at::Tensor scale = gdl_grad_scale(grad_out, pred, reduction, name);
  GdlGradOut gp = gdl_grad_output(p, pred);
  GdlGradOut gt;
  if (target_grad) gt = gdl_grad_output(p, target);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(),
                                  "gdl_loss_backward_cuda", [&] {
    gdl::launch_backward<scalar_t>(p, alpha, reduction, scale, gp, target_grad ? &gt : nullptr,
                                   stream, kLaunchCheck);
  });
  gdl_finish_grad(gp);
  if (!target_grad) return {gp.result, at::empty({0}, pred.options())};
  gdl_finish_grad(gt);
  return {gp.result, gt.result};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(pyframepred, CUDA, m) {
  m.impl(op::GdlLossForward::kName, &cuda::gdl_loss_forward_cuda);
  m.impl(op::GdlLossBackward::kName, &cuda::gdl_loss_backward_cuda);
}

}  // namespace pyframepred
