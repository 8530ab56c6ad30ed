// The CPU kernels as seen by the dispatcher of csrc/cpu/dispatch.cpp: one table of function
// pointers per kernel source and ISA level.
//
// Each csrc/cpu/<op>_cpu.cpp is compiled once per level of csrc/cpu/isa_levels.txt, with
// CPU_CAPABILITY defined to the level's name (DEFAULT, AVX2, AVX512, AVX512_BF16, AMX). Everything such a source
// defines lives in the namespace pyframepred::cpu::CPU_CAPABILITY (the kernels themselves in an
// anonymous namespace inside it), so the copies of different levels never share a symbol; the
// only names they export are the tables below, e.g. pyframepred::cpu::AVX2::gdl_kernels.
#pragma once

#include <ATen/ATen.h>

#include "conv_weight_grad.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {
namespace cpu {

// Each kernel has its operator's signature (include/pyframepred/op_signatures.h).
struct ConvLSTMKernels {
  op::ConvLSTMGatesForward::Sig* gates_forward;
  op::ConvLSTMGatesBackward::Sig* gates_backward;
  // gates_forward with h written into a given tensor (GatesForwardInto of convlstm_host.h)
  op::ConvLSTMGatesForward::Result (*gates_forward_into)(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS,
                                                         const at::Tensor& h_out);
  // gates_backward for grad_h + grad_h_add (GatesBackwardAdd of convlstm_host.h)
  op::ConvLSTMGatesBackward::Result (*gates_backward_add)(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS,
                                                         const at::Tensor& grad_h_add);
  // the layer's copy between planar and interleaved frames (CopyFramesKernel of convlstm_host.h)
  op::CopyFrames::Sig* copy_frames;
};

struct ConvKernels {
  op::Conv2dWeightGrad::Sig* weight_grad;
  op::Conv2dSame::Sig* same;
  // conv2d_same's weight prepared for many calls (PrepareConvSame of conv_weight_grad.h)
  PrepareConvSame* same_prepare;
  // weight gradients summed over calls (WeightGradSum of conv_weight_grad.h)
  WeightGradSumAdd* weight_grad_sum_add;
  WeightGradSumFinish* weight_grad_sum_finish;
};

struct GdlKernels {
  op::GdlLossForward::Sig* loss_forward;
  op::GdlLossBackward::Sig* loss_backward;
};

}  // namespace cpu
}  // namespace pyframepred

// Declares the tables of level L (defined, constant-initialised, at the end of each kernel source).
#define PYFRAMEPRED_DECLARE_CPU_KERNELS(L)           \
  namespace pyframepred::cpu::L {                    \
  extern const ::pyframepred::cpu::ConvLSTMKernels convlstm_kernels; \
  extern const ::pyframepred::cpu::GdlKernels gdl_kernels;           \
  extern const ::pyframepred::cpu::ConvKernels conv_kernels;         \
  }
