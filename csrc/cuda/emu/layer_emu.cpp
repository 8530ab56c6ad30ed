// The ConvLSTM layer as it runs on a GPU, on the CPU execution model: the layer's schedule
// (convlstm_layer_impl.h) with the CUDA backend -- the layout, convolutions (ATen's) and chunk
// size of a CUDA call, the cell's CUDA kernels through their launchers (convlstm_launch.cuh),
// h written straight into the layer's frames as on the device -- on CPU tensors. Fresh buffers of
// the schedule and of the kernels are filled with NaN first, so an element nothing writes shows
// up in the comparison with the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "convlstm_layer_impl.h"
#include "emu_ops.h"

namespace pyframepred {
namespace cuda_emu {

namespace {

// The layer's chunk of batched steps in bytes of gates, where a test sets one (so that small
// shapes cross chunk boundaries); 0: CUDA's.
int64_t& layer_chunk_bytes() {
  static int64_t bytes = 0;
  return bytes;
}

op::ConvLSTMGatesBackward::Result backward(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  auto [grad_gates, grad_c_prev, grad_params, partial] =
      convlstm_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  return {grad_gates, grad_c_prev, grad_params};
}

layer::LayerBackend cuda_backend(const at::Tensor& /*like*/) {
  layer::LayerBackend b = layer::conventions(c10::DeviceType::CUDA);
  b.gates_forward_into = &convlstm_forward_into;
  b.gates_forward = &convlstm_forward;
  b.gates_backward = &backward;
  if (layer_chunk_bytes() > 0) b.chunk_bytes = layer_chunk_bytes();
  b.poison_buffers = true;
  return b;
}

// bytes > 0: the chunk tests take; 0: CUDA's again. Returns CUDA's.
int64_t set_layer_chunk_bytes(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "chunk bytes must be >= 0, got ", bytes);
  layer_chunk_bytes() = bytes;
  return layer::conventions(c10::DeviceType::CUDA).chunk_bytes;
}

}  // namespace

}  // namespace cuda_emu
}  // namespace pyframepred

TORCH_LIBRARY_FRAGMENT(pyframepred_emu, m) {
  namespace op = pyframepred::op;
  m.def("set_layer_chunk_bytes(int bytes) -> int", &pyframepred::cuda_emu::set_layer_chunk_bytes);
  m.def(op::schema<op::ConvLSTMLayer>().c_str());
}

TORCH_LIBRARY_IMPL(pyframepred_emu, CPU, m) {
  using pyframepred::cuda_emu::cuda_backend;
  m.impl(pyframepred::op::ConvLSTMLayer::kName, &pyframepred::layer::layer_forward<&cuda_backend>);
}

TORCH_LIBRARY_IMPL(pyframepred_emu, Autograd, m) {
  using pyframepred::cuda_emu::cuda_backend;
  m.impl(pyframepred::op::ConvLSTMLayer::kName, &pyframepred::layer::layer_autograd<&cuda_backend>);
}
