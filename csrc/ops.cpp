// The one list of pyframepred's operators: their schemas. Kernels register implementations for
// CPU (csrc/cpu) and CUDA (csrc/cuda); fake kernels live in pyframepred/ops. The kernels honour
// any strides, hence `flexible_layout`: torch.compile need not copy inputs into a fixed layout.
#include <torch/library.h>

TORCH_LIBRARY(pyframepred, m) {
  // Fused ConvLSTM cell. x_gates/h_gates: (N, 4C, H, W) pre-activations in gate order i, f, g, o;
  // c_prev: (N, C, H, W); bias: (4C,); peephole: (3, C) weights of i, f (on c_prev) and o (on c).
  // Returns h, c and, when save_gates, the activated gates (N, 4C, H, W) that backward needs
  // (an empty tensor otherwise).
  m.def(
      "convlstm_gates_forward(Tensor x_gates, Tensor? h_gates, Tensor c_prev, Tensor? bias, "
      "Tensor? peephole, bool save_gates) -> (Tensor h, Tensor c, Tensor gates)",
      {at::Tag::flexible_layout});
  // Backward of convlstm_gates_forward. Returns the gradient of the gate pre-activations (shared by
  // x_gates and h_gates), of c_prev, and, when param_grads, grad_params (7, C): rows 0-3 the bias
  // gradient (reshape to (4C,)), rows 4-6 the peephole gradient (empty when not param_grads).
  m.def(
      "convlstm_gates_backward(Tensor grad_h, Tensor grad_c, Tensor gates, Tensor c_prev, "
      "Tensor? peephole, bool param_grads) -> (Tensor grad_gates, Tensor grad_c_prev, "
      "Tensor grad_params)",
      {at::Tag::flexible_layout});
  // One ConvLSTM layer over a sequence (csrc/convlstm_layer.cpp): x (T*N, C_in, H, W) holds the
  // frames of `steps` steps time-major; weight_x (4C, C_in, kh, kw), weight_h (4C, C, kh, kw),
  // odd kernels, 'same' padding; bias, peephole as above; h0, c0 (N, C, H, W) or zeros. Returns h
  // of every step (T*N, C, H, W) and the last h and c. Input convolutions are batched over the
  // steps, and so are the weight gradients in backward.
  m.def(
      "convlstm_layer(Tensor x, int steps, Tensor weight_x, Tensor weight_h, Tensor? bias, "
      "Tensor? peephole, Tensor? h0, Tensor? c0) -> (Tensor h_seq, Tensor h_last, Tensor c_last)",
      {at::Tag::flexible_layout});
  // Gradient difference loss (Mathieu et al. 2015). reduction: 0 = none, 1 = mean, 2 = sum.
  m.def("gdl_loss_forward(Tensor pred, Tensor target, float alpha, int reduction) -> Tensor",
        {at::Tag::flexible_layout});
  m.def(
      "gdl_loss_backward(Tensor grad_out, Tensor pred, Tensor target, float alpha, int reduction, "
      "bool target_grad) -> (Tensor grad_pred, Tensor grad_target)",
      {at::Tag::flexible_layout});
  // The instruction-set level of the CPU kernels (csrc/cpu/dispatch.cpp): the one in use
  // ("default", "avx2" or "avx512"), the ones compiled into this build, and a switch that returns
  // the previous level (for tests and benchmarks; chosen at load time from the CPU and
  // PYFRAMEPRED_CPU_ISA otherwise).
  m.def("cpu_isa() -> str");
  m.def("cpu_isa_levels() -> str[]");
  m.def("_set_cpu_isa(str level) -> str");
}
