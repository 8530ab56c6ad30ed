// The ConvLSTM layer operator (op_signatures.h: ConvLSTMLayer): the schedule of
// convlstm_layer_impl.h with each device's backend, registered for the CPU and CUDA and with its
// autograd, so LibTorch users reach it through the dispatcher like the other ops; and the same
// schedule split into the forward and backward operators of a training step
// (ConvLSTMLayerTrain, ConvLSTMLayerBackward), whose autograd lives in Python.
#include "convlstm_layer.h"

#include <torch/library.h>

#include "autograd_utils.h"
#include "convlstm_layer_impl.h"

namespace pyframepred {

namespace {

// The backend of the device `like` lies on: its conventions and the kernels registered for it
// (the CPU's at the ISA level in use, cpu/dispatch.cpp; CUDA's, cuda/convlstm_cuda.cu).
layer::LayerBackend device_backend(const at::Tensor& like) {
  const c10::DeviceType device = like.device().type();
  layer::LayerBackend b = layer::conventions(device);
  b.gates_forward_into = gates_forward_into(device);
  b.gates_backward_partial = gates_backward_partial(device);
  b.gates_backward_add = gates_backward_add(device);
  b.prepare_conv = prepare_conv_same(device);
  b.weight_grad_sum = weight_grad_sum(device);
  b.copy_frames = frames_copy_kernel(device);
  return b;
}

// convlstm_layer_backward is not itself differentiable: under create_graph=True (grad mode on in
// backward), where an argument requires grad, its results go through an error node instead of
// entering the new graph as constants (a second derivative would be silently wrong).
op::ConvLSTMLayerBackward::Result layer_backward_autograd(
    PYFRAMEPRED_CONVLSTM_LAYER_BACKWARD_PARAMS) {
  std::vector<at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op::handle<op::ConvLSTMLayerBackward>().call(grad_h_seq, grad_h_last, grad_c_last, x,
                                                       steps, weight_x, weight_h, bias, peephole,
                                                       h0, c0, h_prev, gates, cells, output_mask);
  }
  const auto wants = [](const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() && t->requires_grad();
  };
  bool any = wants(grad_h_seq) || wants(grad_h_last) || wants(grad_c_last) || wants(x) ||
             wants(weight_x) || wants(weight_h) || wants(bias) || wants(peephole) || wants(h0) ||
             wants(c0) || wants(h_prev);
  for (const auto& list : {gates, cells}) {
    for (const at::Tensor& t : list) any = any || t.requires_grad();
  }
  if (!at::GradMode::is_enabled() || !any) return out;
  return once_differentiable(
      std::move(out),
      "pyframepred.ops.convlstm_layer (compiled): the fused backward is not differentiable, so "
      "second derivatives (double backward, e.g. a gradient penalty) are not supported; use the "
      "reference modules (fused=False) for that");
}

}  // namespace

op::ConvLSTMLayer::Result convlstm_layer_forward(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  return layer::layer_forward<&device_backend>(x, steps, weight_x, weight_h, bias, peephole, h0,
                                               c0);
}

// The training step's forward and backward for an autograd registered outside C++ (torch.compile,
// pyframepred/ops/_layer.py); registered for each device, with no autograd kernel of their own.
static void register_layer_kernels(torch::Library& m) {
  m.impl(op::ConvLSTMLayer::kName, &convlstm_layer_forward);
  m.impl(op::ConvLSTMLayerTrain::kName, &layer::layer_train<&device_backend>);
  m.impl(op::ConvLSTMLayerBackward::kName, &layer::layer_train_backward<&device_backend>);
}

TORCH_LIBRARY_IMPL(pyframepred, CPU, m) { register_layer_kernels(m); }
TORCH_LIBRARY_IMPL(pyframepred, CUDA, m) { register_layer_kernels(m); }
TORCH_LIBRARY_IMPL(pyframepred, Autograd, m) {
  m.impl(op::ConvLSTMLayer::kName, &layer::layer_autograd<&device_backend>);
  m.impl(op::ConvLSTMLayerBackward::kName, &layer_backward_autograd);
}

}  // namespace pyframepred
