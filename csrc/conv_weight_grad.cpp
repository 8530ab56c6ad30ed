#include "conv_weight_grad.h"

#include <torch/library.h>

#include <string>
#include <vector>

#include "buffer_pool.h"
#include "checks.h"

namespace pyframepred {

void check_conv2d_weight_grad_args(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  constexpr const char* op = "conv2d_weight_grad";
  TORCH_CHECK(grad_out.dim() == 4 && input.dim() == 4, op,
              ": grad_out and input must be 4-d (B, C, H, W), got shapes ",
              shape_str(grad_out.sizes()), " and ", shape_str(input.sizes()));
  TORCH_CHECK(grad_out.size(0) == input.size(0) && grad_out.size(2) == input.size(2) &&
                  grad_out.size(3) == input.size(3),
              op, ": grad_out ", shape_str(grad_out.sizes()), " and input ",
              shape_str(input.sizes()), " must agree in batch, height and width (stride 1, 'same')");
  TORCH_CHECK(kh >= 1 && kw >= 1 && kh % 2 == 1 && kw % 2 == 1, op,
              ": the kernel size must be odd ('same' padding), got ", std::to_string(kh), "x",
              std::to_string(kw));
  check_like(grad_out, input, op, "grad_out", "input");
}

at::Tensor conv2d_weight_grad_aten(PYFRAMEPRED_CONV2D_WEIGHT_GRAD_PARAMS) {
  check_conv2d_weight_grad_args(grad_out, input, kh, kw);
  // Only the weight's shape, dtype and layout matter for the weight gradient.
  const at::Tensor weight =
      at::empty({grad_out.size(1), input.size(1), kh, kw},
                input.options().memory_format(input.suggest_memory_format()));
  return std::get<1>(at::convolution_backward(grad_out, input, weight, std::nullopt, {1, 1},
                                              {kh / 2, kw / 2}, {1, 1}, false, {0, 0}, 1,
                                              {false, true, false}))
      .contiguous(input.suggest_memory_format());
}

void check_conv2d_same_args(PYFRAMEPRED_CONV2D_SAME_PARAMS) {
  constexpr const char* op = "conv2d_same";
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4, op,
              ": input and weight must be 4-d, (B, C_in, H, W) and (C_out, C_in, kh, kw), got "
              "shapes ", shape_str(input.sizes()), " and ", shape_str(weight.sizes()));
  TORCH_CHECK(weight.size(1) == input.size(1), op, ": weight ", shape_str(weight.sizes()),
              " must have input's ", std::to_string(input.size(1)), " channels in dim 1");
  TORCH_CHECK(weight.size(2) % 2 == 1 && weight.size(3) % 2 == 1, op,
              ": the kernel size must be odd ('same' padding), got weight of shape ",
              shape_str(weight.sizes()));
  check_like(weight, input, op, "weight", "input");
}

at::Tensor conv2d_same_aten(PYFRAMEPRED_CONV2D_SAME_PARAMS) {
  check_conv2d_same_args(input, weight);
  return at::convolution(input, weight, std::nullopt, {1, 1},
                         {weight.size(2) / 2, weight.size(3) / 2}, {1, 1}, false, {0, 0}, 1)
      .contiguous(input.suggest_memory_format());
}

at::Tensor nhwc(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

void check_prepared_conv_args(const at::Tensor& input, const at::Tensor& u, at::ScalarType dtype,
                              const at::Tensor& addend) {
  constexpr const char* op = "conv2d_same (prepared weight)";
  TORCH_CHECK(input.dim() == 4 && input.size(1) == u.size(1) && input.scalar_type() == dtype, op,
              ": input of shape ", shape_str(input.sizes()), " and dtype ", input.scalar_type(),
              " does not fit the weight's ", std::to_string(u.size(1)), " input channels and ",
              dtype);
  if (!addend.defined()) return;
  const std::vector<int64_t> shape = {input.size(0), u.size(2), input.size(2), input.size(3)};
  TORCH_CHECK(addend.sizes() == at::IntArrayRef(shape) && addend.scalar_type() == dtype, op,
              ": addend of shape ", shape_str(addend.sizes()), " and dtype ", addend.scalar_type(),
              ", expected ", shape_str(shape), " and ", dtype);
}

at::Tensor scratch_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return cell_buffer(sizes, options).zero_();
}

// Every device but the CPU (which has its kernels, csrc/cpu/conv_cpu.cpp); Meta included.
TORCH_LIBRARY_IMPL(pyframepred, CompositeExplicitAutograd, m) {
  m.impl(op::Conv2dWeightGrad::kName, &conv2d_weight_grad_aten);
  m.impl(op::Conv2dSame::kName, &conv2d_same_aten);
}

}  // namespace pyframepred
