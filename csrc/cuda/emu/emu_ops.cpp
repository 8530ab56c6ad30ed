// The test extension of the CPU execution model: the emulated kernels as torch.ops.pyframepred_emu.*
// plus the test hooks (forced 64-bit indexing, planted bugs, launch log, memory-access model).
#include <torch/library.h>

#include <string>

#include "../common.cuh"
#include "emu_ops.h"

namespace pyframepred {
namespace cuda_emu {
namespace {

void set_options(bool force_index64, int64_t plant) {
  TORCH_CHECK(plant >= 0 && plant <= 2, "plant must be 0 (none), 1 (no barriers) or 2 (shifted thread index)");
  cuda::launch_options().force_index64 = force_index64;
  ::pf_emu::options().plant = static_cast<int>(plant);
}

// The launches recorded since the last call (one line each: variant, then grid and block).
std::string launch_log() {
  auto& log = ::pf_emu::launch_log();
  std::string out;
  for (const auto& line : log) out += line + "\n";
  log.clear();
  return out;
}

at::Tensor gdl_finish_op(const at::Tensor& partial, double divisor, int64_t out_dtype) {
  return gdl_finish(partial, divisor, static_cast<at::ScalarType>(out_dtype));
}

}  // namespace
}  // namespace cuda_emu
}  // namespace pyframepred

TORCH_LIBRARY(pyframepred_emu, m) {
  using namespace pyframepred::cuda_emu;
  namespace op = pyframepred::op;
  m.def("set_options(bool force_index64, int plant) -> ()", &set_options);
  m.def("launch_log() -> str", &launch_log);
  // The memory-access model (cuda_emu.h): on/off, and the launches traced since the last call.
  m.def("set_memory_trace(bool on) -> ()", [](bool on) { ::pf_emu::set_memory_trace(on); });
  m.def("memory_trace() -> str", [] { return ::pf_emu::memory_trace(); });
  // The emulated operators take their operator's arguments (op_signatures.h).
  m.def(op::schema<op::ConvLSTMGatesForward>("convlstm_forward", "(Tensor, Tensor, Tensor)")
            .c_str(),
        &convlstm_forward);
  m.def(op::schema<op::ConvLSTMGatesBackward>("convlstm_backward",
                                              "(Tensor, Tensor, Tensor, Tensor)")
            .c_str(),
        &convlstm_backward);
  m.def(op::schema<op::GdlLossForward>("gdl_forward").c_str(), &gdl_forward);
  m.def("gdl_partials(Tensor pred, Tensor target, float alpha) -> Tensor", &gdl_partials);
  m.def("gdl_finish(Tensor partial, float divisor, int out_dtype) -> Tensor", &gdl_finish_op);
  m.def(op::schema<op::GdlLossBackward>("gdl_backward", "(Tensor, Tensor)").c_str(),
        &gdl_backward);
}
