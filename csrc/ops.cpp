// The one list of pyframepred's operators: TORCH_LIBRARY registers the schema of each, declared
// (with its C++ signature and what it computes) in <pyframepred/op_signatures.h>. Kernels register
// implementations for CPU (csrc/cpu) and CUDA (csrc/cuda); fake kernels live in pyframepred/ops.
// The kernels honour any strides, hence `flexible_layout`: torch.compile need not copy inputs into
// a fixed layout.
#include <torch/library.h>

#include "include/pyframepred/op_signatures.h"

namespace {

template <typename Op>
void def(torch::Library& m, const std::vector<at::Tag>& tags = {}) {
  m.def(pyframepred::op::schema<Op>().c_str(), tags);
}

}  // namespace

TORCH_LIBRARY(pyframepred, m) {
  namespace op = pyframepred::op;
  def<op::ConvLSTMGates>(m);
  def<op::ConvLSTMGatesForward>(m, {at::Tag::flexible_layout});
  def<op::ConvLSTMGatesBackward>(m, {at::Tag::flexible_layout});
  def<op::ConvLSTMLayer>(m, {at::Tag::flexible_layout});
  def<op::ConvLSTMLayerTrain>(m, {at::Tag::flexible_layout});
  def<op::ConvLSTMLayerBackward>(m, {at::Tag::flexible_layout});
  def<op::Conv2dWeightGrad>(m, {at::Tag::flexible_layout});
  def<op::Conv2dSame>(m, {at::Tag::flexible_layout});
  def<op::GdlLossForward>(m, {at::Tag::flexible_layout});
  def<op::GdlLossBackward>(m, {at::Tag::flexible_layout});
  def<op::CpuIsa>(m);
  def<op::CpuIsaLevels>(m);
  def<op::SetCpuIsa>(m);
  def<op::CopyFrames>(m);
  def<op::CpuBufferPoolStats>(m);
  def<op::EmptyCpuBufferPool>(m);
}
