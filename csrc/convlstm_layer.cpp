// The ConvLSTM layer operator (op_signatures.h: ConvLSTMLayer): the schedule of
// convlstm_layer_impl.h with each device's backend, registered for the CPU and CUDA and with its
// autograd, so LibTorch users reach it through the dispatcher like the other ops.
#include "convlstm_layer.h"

#include <torch/library.h>

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

}  // namespace

op::ConvLSTMLayer::Result convlstm_layer_forward(PYFRAMEPRED_CONVLSTM_LAYER_PARAMS()) {
  return layer::layer_forward<&device_backend>(x, steps, weight_x, weight_h, bias, peephole, h0,
                                               c0);
}

TORCH_LIBRARY_IMPL(pyframepred, CPU, m) {
  m.impl(op::ConvLSTMLayer::kName, &convlstm_layer_forward);
}
TORCH_LIBRARY_IMPL(pyframepred, CUDA, m) {
  m.impl(op::ConvLSTMLayer::kName, &convlstm_layer_forward);
}
TORCH_LIBRARY_IMPL(pyframepred, Autograd, m) {
  m.impl(op::ConvLSTMLayer::kName, &layer::layer_autograd<&device_backend>);
}

}  // namespace pyframepred
