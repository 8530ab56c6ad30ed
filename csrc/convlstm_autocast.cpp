// The one autocast policy of the ConvLSTM operators, registered for the AutocastCPU and
// AutocastCUDA dispatch keys (as torchvision registers its ops), so it holds for Python and
// LibTorch callers alike:
//   - what feeds a convolution or a gate sum -- x, the weights, h0, the gate pre-activations --
//     runs in the autocast dtype (bfloat16 / float16); the layer takes a float32 x as it is and
//     casts it as it reads it;
//   - the cell state and the per-channel parameters -- c_prev / c0, bias, peephole -- in float32.
// The kernels take that mix directly: the gates are read in the low-precision dtype and widened in
// registers, h comes out in the autocast dtype, c stays float32. float64 inputs are left alone (as
// autocast leaves them). The backward operator needs no kernel here: autograd hands it tensors of
// the dtypes the forward produced.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "convlstm_host.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace {

template <c10::DeviceType kDevice>
struct AutocastCasts {
  c10::impl::ExcludeDispatchKeyGuard no_autocast{
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice)};
  const at::ScalarType low = at::autocast::get_lower_precision_fp_from_device_type(kDevice);

  at::Tensor lowp(const at::Tensor& t) const { return at::autocast::cached_cast(low, t, kDevice); }
  std::optional<at::Tensor> lowp(const std::optional<at::Tensor>& t) const {
    return at::autocast::cached_cast(low, t, kDevice);
  }
  at::Tensor fp32(const at::Tensor& t) const {
    return at::autocast::cached_cast(at::kFloat, t, kDevice);
  }
  std::optional<at::Tensor> fp32(const std::optional<at::Tensor>& t) const {
    return at::autocast::cached_cast(at::kFloat, t, kDevice);
  }
};

template <c10::DeviceType kDevice>
op::ConvLSTMGatesForward::Result convlstm_gates_forward_autocast(
    PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  const AutocastCasts<kDevice> cast;
  return op::handle<op::ConvLSTMGatesForward>().call(cast.lowp(x_gates), cast.lowp(h_gates),
                                                     cast.fp32(c_prev), cast.fp32(bias),
                                                     cast.fp32(peephole), save_gates);
}

// The layer's policy, for convlstm_layer and its training step's forward convlstm_layer_train
// (whose backward, convlstm_layer_backward, takes the tensors autocast gave the forward).
template <c10::DeviceType kDevice, typename Op>
typename Op::Result convlstm_layer_autocast(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  const AutocastCasts<kDevice> cast;
  // A float32 x goes in as it is: the layer casts it as it reads it (x_cast,
  // convlstm_layer_impl.h), in the one pass over x it makes anyway.
  const bool cast_in_layer = x.scalar_type() == at::kFloat && is_reduced_float(cast.low);
  const at::Tensor x_low = cast_in_layer ? x : cast.lowp(x);
  std::optional<at::Tensor> c_init = cast.fp32(c0);
  const auto given = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  if (!given(c0) && !given(bias) && !given(peephole) &&
      (cast_in_layer || is_reduced_float(x_low.scalar_type())) &&
      (x.dim() == 4 || x.dim() == 5) && weight_h.dim() == 4 && steps >= 1) {
    // Nothing else names the state's dtype: start it as float32 zeros explicitly (one zero,
    // expanded: the layer lays it out as it runs).
    const int64_t N = x.dim() == 5 ? x.size(1) : x.size(0) / std::max<int64_t>(steps, 1);
    c_init = at::zeros({}, x.options().dtype(at::kFloat))
                 .expand({N, weight_h.size(1), x.size(-2), x.size(-1)});
  }
  return op::handle<Op>().call(x_low, steps, cast.lowp(weight_x), cast.lowp(weight_h),
                               cast.fp32(bias), cast.fp32(peephole), cast.lowp(h0), c_init);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyframepred, AutocastCPU, m) {
  m.impl(op::ConvLSTMGatesForward::kName, &convlstm_gates_forward_autocast<c10::DeviceType::CPU>);
  m.impl(op::ConvLSTMLayer::kName,
         &convlstm_layer_autocast<c10::DeviceType::CPU, op::ConvLSTMLayer>);
  m.impl(op::ConvLSTMLayerTrain::kName,
         &convlstm_layer_autocast<c10::DeviceType::CPU, op::ConvLSTMLayerTrain>);
}

TORCH_LIBRARY_IMPL(pyframepred, AutocastCUDA, m) {
  m.impl(op::ConvLSTMGatesForward::kName, &convlstm_gates_forward_autocast<c10::DeviceType::CUDA>);
  m.impl(op::ConvLSTMLayer::kName,
         &convlstm_layer_autocast<c10::DeviceType::CUDA, op::ConvLSTMLayer>);
  m.impl(op::ConvLSTMLayerTrain::kName,
         &convlstm_layer_autocast<c10::DeviceType::CUDA, op::ConvLSTMLayerTrain>);
}

}  // namespace pyframepred
