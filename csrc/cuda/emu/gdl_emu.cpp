// The GDL kernels run on the CPU execution model: the launch sequence of the real launcher
// (gdl_launch.cuh) with PF_LAUNCH mapped to the emulated launch. Outputs are filled with NaN
// first, so an element a kernel fails to write shows up in the comparison.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <limits>

#include "../gdl_launch.cuh"
#include "emu_ops.h"
#include "gdl_host.h"

namespace pyframepred {
namespace cuda_emu {

namespace {
const auto kNoCheck = [] {};
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}  // namespace

op::GdlLossForward::Result gdl_forward(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS) {
  const GdlPlan p = cuda::gdl::plan(pred, target, alpha, reduction, op::GdlLossForward::kName);
  at::Tensor out = gdl_forward_output(pred, reduction);
  out.fill_(kNaN);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "gdl_forward_emu", [&] {
    cuda::gdl::launch_forward<scalar_t>(p, alpha, reduction, out, nullptr, kNoCheck);
  });
  return out;
}

at::Tensor gdl_partials(const at::Tensor& pred, const at::Tensor& target, double alpha) {
  const GdlPlan p = cuda::gdl::plan(pred, target, alpha, 0, op::GdlLossForward::kName);
  const cuda::gdl::Plan q = cuda::gdl::make_plan(p);
  at::Tensor partial = at::full({p.B, q.groups_per_image}, kNaN,
                                pred.options().dtype(at::toOpMathType(pred.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "gdl_partials_emu", [&] {
    using A = cuda::gdl::acc_t<scalar_t>;
    cuda::gdl::launch_forward_partials<scalar_t>(p, q, alpha, partial.mutable_data_ptr<A>(), nullptr,
                                                 kNoCheck);
  });
  return partial;
}

at::Tensor gdl_finish(const at::Tensor& partial, double divisor, at::ScalarType out_dtype) {
  TORCH_CHECK(partial.dim() == 2 && partial.is_contiguous(), "gdl_finish: partial must be a contiguous (nout, per_out) tensor");
  TORCH_CHECK(partial.scalar_type() == at::toOpMathType(out_dtype), "gdl_finish: partial must have the accumulation dtype of out_dtype");
  at::Tensor out = at::full({partial.size(0)}, kNaN, partial.options().dtype(out_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "gdl_finish_emu", [&] {
    using A = cuda::gdl::acc_t<scalar_t>;
    cuda::gdl::launch_finish<scalar_t>(partial.const_data_ptr<A>(), partial.size(1), partial.size(0),
                                       static_cast<A>(divisor), out.mutable_data_ptr<scalar_t>(),
                                       nullptr, kNoCheck);
  });
  return out;
}

op::GdlLossBackward::Result gdl_backward(PYFRAMEPRED_GDL_LOSS_BACKWARD_PARAMS) {
  constexpr const char* name = op::GdlLossBackward::kName;
  const GdlPlan p = cuda::gdl::plan(pred, target, alpha, reduction, name);
  const at::Tensor scale = gdl_grad_scale(grad_out, pred, reduction, name);
  GdlGradOut gp = gdl_grad_output(p, pred);
  gp.write.fill_(kNaN);
  GdlGradOut gt;
  if (target_grad) {
    gt = gdl_grad_output(p, target);
    gt.write.fill_(kNaN);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "gdl_backward_emu", [&] {
    cuda::gdl::launch_backward<scalar_t>(p, alpha, reduction, scale, gp, target_grad ? &gt : nullptr,
                                         nullptr, kNoCheck);
  });
  gdl_finish_grad(gp);
  if (!target_grad) return {gp.result, at::empty({0}, pred.options())};
  gdl_finish_grad(gt);
  return {gp.result, gt.result};
}

}  // namespace cuda_emu
}  // namespace pyframepred
