// The ConvLSTM layer as it runs on a GPU, on the CPU execution model: the layer's schedule
// (convlstm_layer_impl.h) with the CUDA backend -- the layout, convolutions (ATen's) and chunk
// size of a CUDA call, the cell's CUDA kernels through their launchers (convlstm_launch.cuh),
// h written straight into the layer's frames as on the device -- on CPU tensors. Fresh buffers of
// the schedule and of the kernels are filled with NaN first, so an element nothing writes shows
// up in the comparison with the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <utility>

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

// On a GPU the cell's kernels read their inputs along the gates' layout (NCHW or channels_last):
// an input laid out otherwise is read uncoalesced, at a fraction of the bandwidth, with right
// results. So the layer must hand every cell call inputs dense in the gates' memory format (or
// expanded, as a zero gradient is); here that is an error rather than a slow kernel.
void check_layout(const std::optional<at::Tensor>& t, const at::Tensor& gates, const char* name) {
  if (!t.has_value() || !t->defined()) return;
  const bool cl = channels_fastest(as_view3(gates));
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto strides = t->strides();
  const bool expanded = std::all_of(strides.begin(), strides.end(), [](int64_t s) { return s == 0; });
  TORCH_CHECK(expanded || t->is_contiguous(fmt), "convlstm_layer (CUDA schedule): the cell's ", name,
              " of strides ", shape_str(strides), " is not laid out as its gates (",
              cl ? "channels_last" : "NCHW", ")");
}

op::ConvLSTMGatesForward::Result forward_into(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS,
                                              const at::Tensor& h_out) {
  check_layout(h_gates, x_gates, "h_gates");
  check_layout(c_prev, x_gates, "c_prev");
  check_layout(h_out, x_gates, "h_out");
  return convlstm_forward_into(x_gates, h_gates, c_prev, bias, peephole, save_gates, h_out);
}

op::ConvLSTMGatesForward::Result forward(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  return forward_into(x_gates, h_gates, c_prev, bias, peephole, save_gates, at::Tensor());
}

void check_backward_layouts(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  for (const auto& [t, name] : {std::make_pair(&grad_h, "grad_h"), std::make_pair(&grad_c, "grad_c"),
                                std::make_pair(&c_prev, "c_prev")}) {
    check_layout(*t, gates, name);
  }
}

op::ConvLSTMGatesBackward::Result backward(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  check_backward_layouts(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  auto [grad_gates, grad_c_prev, grad_params, partial] =
      convlstm_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  return {grad_gates, grad_c_prev, grad_params};
}

// As CUDA's GatesBackwardPartial: the parameter gradients left as the kernel's partial sums.
op::ConvLSTMGatesBackward::Result backward_partial(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  check_backward_layouts(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  return convlstm_backward_partial(grad_h, grad_c, gates, c_prev, peephole, param_grads);
}

layer::LayerBackend cuda_backend(const at::Tensor& /*like*/) {
  layer::LayerBackend b = layer::conventions(c10::DeviceType::CUDA);
  b.gates_forward_into = &forward_into;
  b.gates_forward = &forward;
  b.gates_backward = &backward;
  b.gates_backward_partial = &backward_partial;
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

// This library's convlstm_layer (the no-gradient path of layer_autograd calls it).
const c10::TypedOperatorHandle<op::ConvLSTMLayer::Sig>& emu_layer_handle() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("pyframepred_emu::convlstm_layer", "")
                            .typed<op::ConvLSTMLayer::Sig>();
  return h;
}

}  // namespace cuda_emu
}  // namespace pyframepred

TORCH_LIBRARY_FRAGMENT(pyframepred_emu, m) {
  namespace op = pyframepred::op;
  m.def("set_layer_chunk_bytes(int bytes) -> int", &pyframepred::cuda_emu::set_layer_chunk_bytes);
  m.def(op::schema<op::ConvLSTMLayer>().c_str());
  m.def(op::schema<op::ConvLSTMLayerTrain>().c_str());
  m.def(op::schema<op::ConvLSTMLayerBackward>().c_str());
}

TORCH_LIBRARY_IMPL(pyframepred_emu, CPU, m) {
  using pyframepred::cuda_emu::cuda_backend;
  m.impl(pyframepred::op::ConvLSTMLayer::kName, &pyframepred::layer::layer_forward<&cuda_backend>);
  // The training step's two operators (torch.compile's), called directly by the tests.
  m.impl(pyframepred::op::ConvLSTMLayerTrain::kName, &pyframepred::layer::layer_train<&cuda_backend>);
  m.impl(pyframepred::op::ConvLSTMLayerBackward::kName,
         &pyframepred::layer::layer_train_backward<&cuda_backend>);
}

TORCH_LIBRARY_IMPL(pyframepred_emu, Autograd, m) {
  using pyframepred::cuda_emu::cuda_backend;
  using pyframepred::cuda_emu::emu_layer_handle;
  m.impl(pyframepred::op::ConvLSTMLayer::kName,
         &pyframepred::layer::layer_autograd<&cuda_backend, &emu_layer_handle>);
}
