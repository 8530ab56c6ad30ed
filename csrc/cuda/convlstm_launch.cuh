// Launch configuration and launch sequence of the ConvLSTM kernels, shared by the real launcher
// (convlstm_cuda.cu, nvcc) and the emulated one (emu/convlstm_emu.cpp, host compiler): the grid
// and block shape, the template variant (32/64-bit index, layout, peephole, vector width) and
// the kernel arguments are computed here once, so the tests run the configuration the GPU gets.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "convlstm_host.h"
#include "convlstm_kernels.cuh"

namespace pyframepred {
namespace cuda {
namespace convlstm {

// Which compiled variant runs, and with what grid.
struct Config {
  LaunchCfg launch;
  bool index32 = true;  // every offset fits in int32
  bool cl = false;      // channels_last iteration (channels contiguous)
  bool peep = false;
  int vec = 1;          // elements per access: 1 (scalar, any strides) or vec_width<T>()
  int64_t partial_rows = 0;
  std::string describe(const char* kernel) const {
    return std::string(kernel) + (index32 ? " i32" : " i64") + (cl ? " cl" : " nchw") +
           (peep ? " peep" : "") + " vec=" + std::to_string(vec);
  }
};

// Largest element offset reachable in t's (N, K, P) view.
inline int64_t max_offset(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0;
  const View3 v = view3_strides(t);
  return (t.size(0) - 1) * std::abs(v.sN) + (t.size(1) - 1) * std::abs(v.sC) +
         (t.size(2) * t.size(3) - 1) * std::abs(v.sP);
}

inline bool fits_int32(std::initializer_list<at::Tensor> ts) {
  if (launch_options().force_index64) return false;
  for (const auto& t : ts) {
    // Offsets are formed as n*sN + ch*sC + p*sP plus a gate step: keep a factor 2 of headroom.
    if (max_offset(t) >= std::numeric_limits<int32_t>::max() / 2) return false;
  }
  return true;
}

// Whether operand `t` can be read V elements at a time along its contiguous dimension (cl:
// channels, else positions): stride 1 there, every other stride a multiple of V, the data
// aligned to the vector, or (inputs only) stride 0 there (expanded: one scalar, broadcast).
inline bool vectorizable(const at::Tensor& t, bool cl, int V, bool input) {
  if (!t.defined() || t.numel() == 0) return true;
  const View3 s = view3_strides(t);
  const int64_t fast = cl ? s.sC : s.sP;
  if (input && fast == 0) return true;
  if (fast != 1) return false;
  const int64_t other = cl ? s.sP : s.sC;
  const int64_t P = t.size(2) * t.size(3);
  if ((t.size(0) > 1 && s.sN % V != 0) || (((cl ? P : t.size(1)) > 1) && other % V != 0)) return false;
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (static_cast<size_t>(V) * t.element_size()) == 0;
}

inline int pow2_at_least(int64_t n, int cap) {
  int v = 1;
  while (v < cap && v < n) v *= 2;
  return v;
}

// Tile and grid for (N, C, P) with vector width V.
inline LaunchCfg grid_for(int64_t N, int64_t C, int64_t P, bool cl, int V, const char* op) {
  LaunchCfg g;
  const int64_t fast = (cl ? C : P) / V;      // vectors along the contiguous dimension
  const int lx = pow2_at_least(fast, 32);     // threads along it (a warp at most)
  const int ly = kThreads / lx;
  int64_t gx, gy;
  if (cl) {
    gx = (P + int64_t(ly) * kIter - 1) / (int64_t(ly) * kIter);
    gy = (fast + lx - 1) / lx;
  } else {
    gx = (fast + int64_t(lx) * kIter - 1) / (int64_t(lx) * kIter);
    gy = (C + ly - 1) / ly;
  }
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535, op,
              ": frame or channel count too large for one launch (C = ", std::to_string(C),
              ", H*W = ", std::to_string(P), ")");
  g.grid = dim3(static_cast<unsigned>(std::max<int64_t>(gx, 1)), static_cast<unsigned>(std::max<int64_t>(gy, 1)),
                static_cast<unsigned>(std::clamp<int64_t>(N, 1, 65535)));
  g.block = dim3(lx, ly, 1);
  return g;
}

template <typename scalar_t>
inline int choose_vec(bool cl, int64_t C, int64_t P, std::initializer_list<at::Tensor> inputs,
                      std::initializer_list<at::Tensor> outputs) {
  constexpr int V = vec_width<scalar_t>();
  if ((cl ? C : P) % V != 0) return 1;
  for (const auto& t : inputs) {
    if (!vectorizable(t, cl, V, true)) return 1;
  }
  for (const auto& t : outputs) {
    if (!vectorizable(t, cl, V, false)) return 1;
  }
  return V;
}

template <typename scalar_t>
inline Config forward_config(const ConvLSTMForwardPlan& p, cudaStream_t stream) {
  Config c;
  const int64_t P = p.H * p.W;
  c.cl = p.cl;
  c.peep = p.peephole.defined();
  c.index32 = fits_int32({p.x_gates, p.h_gates, p.c_prev, p.h, p.c, p.gates});
  c.vec = choose_vec<scalar_t>(p.cl, p.C, P, {p.x_gates, p.h_gates, p.c_prev},
                               {p.h, p.c, p.gates});
  c.launch = grid_for(p.N, p.C, P, p.cl, c.vec, "convlstm_gates");
  c.launch.stream = stream;
  return c;
}

template <typename scalar_t>
inline Config backward_config(const ConvLSTMBackwardPlan& p, cudaStream_t stream) {
  Config c;
  const int64_t P = p.H * p.W;
  c.cl = p.cl;
  c.peep = p.peephole.defined();
  c.index32 = fits_int32({p.grad_h, p.grad_c, p.gates, p.c_prev, p.grad_gates, p.grad_c_prev});
  c.vec = choose_vec<scalar_t>(p.cl, p.C, P, {p.grad_h, p.grad_c, p.gates, p.c_prev},
                               {p.grad_gates, p.grad_c_prev});
  c.launch = grid_for(p.N, p.C, std::max<int64_t>(P, 1), p.cl, c.vec, "convlstm_gates_backward");
  c.launch.stream = stream;
  c.launch.static_smem = p.cl ? backward_static_smem<scalar_t>() : 0;
  c.partial_rows = static_cast<int64_t>(c.launch.grid.z) * c.launch.grid.x;
  return c;
}

// Calls f(index_tag, cl_tag, peep_tag, vec_tag) with the compile-time variant of `c`.
template <typename scalar_t, typename F>
inline void dispatch_variant(const Config& c, F&& f) {
  constexpr int V = vec_width<scalar_t>();
  dispatch_index(c.index32, [&](auto index_tag) {
    dispatch_bool(c.cl, [&](auto cl_tag) {
      dispatch_bool(c.peep, [&](auto peep_tag) {
        if (c.vec == 1) {
          f(index_tag, cl_tag, peep_tag, std::integral_constant<int, 1>{});
        } else {
          f(index_tag, cl_tag, peep_tag, std::integral_constant<int, V>{});
        }
      });
    });
  });
}

template <typename T, typename index_t>
Operand<T, index_t> operand(T* data, const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return Operand<T, index_t>{data, 0, 0, 0};
  const View3 v = view3_strides(t);
  return Operand<T, index_t>{data, static_cast<index_t>(v.sN), static_cast<index_t>(v.sC),
                             static_cast<index_t>(v.sP)};
}

// Launches the forward kernel for plan `p` (nothing to do when it is empty). `check` runs after
// the launch (the device's launch-error check).
template <typename scalar_t, typename state_t, typename Check>
void launch_forward(const ConvLSTMForwardPlan& p, bool save_gates, cudaStream_t stream,
                    Check&& check) {
  const int64_t P = p.H * p.W;
  if (p.N * p.C * P == 0) return;
  const Config cfg = forward_config<scalar_t>(p, stream);
  dispatch_variant<scalar_t>(cfg, [&](auto index_tag, auto cl_tag, auto peep_tag, auto vec_tag) {
    using index_t = decltype(index_tag);
    constexpr bool kCL = decltype(cl_tag)::value;
    constexpr bool kPeep = decltype(peep_tag)::value;
    constexpr int V = decltype(vec_tag)::value;
    const auto xg = operand<const scalar_t, index_t>(p.x_gates.const_data_ptr<scalar_t>(), p.x_gates);
    const auto hg = p.h_gates.defined()
        ? operand<const scalar_t, index_t>(p.h_gates.const_data_ptr<scalar_t>(), p.h_gates)
        : xg;
    const auto gates = save_gates
        ? operand<scalar_t, index_t>(p.gates.mutable_data_ptr<scalar_t>(), p.gates)
        : Operand<scalar_t, index_t>{nullptr, 0, 0, 0};
#if PF_EMU
    ::pf_emu::record(cfg.describe("convlstm_forward"));
#endif
    PF_LAUNCH(cfg.launch, convlstm_forward_kernel<scalar_t, state_t, index_t, kCL, kPeep, V>)(
        xg, hg, operand<const state_t, index_t>(p.c_prev.const_data_ptr<state_t>(), p.c_prev),
        operand<scalar_t, index_t>(p.h.mutable_data_ptr<scalar_t>(), p.h),
        operand<state_t, index_t>(p.c.mutable_data_ptr<state_t>(), p.c), gates,
        p.bias.defined() ? p.bias.const_data_ptr<state_t>() : nullptr,
        kPeep ? p.peephole.const_data_ptr<state_t>() : nullptr, p.h_gates.defined(), save_gates,
        static_cast<index_t>(p.N), static_cast<index_t>(p.C), static_cast<index_t>(P));
    check();
  });
}

// Launches the backward kernel; returns the (rows, 7, C) per-block partial sums of the parameter
// gradients when param_grads (every entry written by the kernel), else an undefined tensor.
template <typename scalar_t, typename state_t, typename Check>
at::Tensor launch_backward(const ConvLSTMBackwardPlan& p, bool param_grads, cudaStream_t stream,
                           Check&& check) {
  using A = at::opmath_type<scalar_t>;
  const int64_t P = p.H * p.W;
  const Config cfg = backward_config<scalar_t>(p, stream);
  at::Tensor partial;
  if (param_grads) {
    partial = p.N * p.C * P > 0
        ? at::empty({cfg.partial_rows, kParams, p.C}, p.gates.options().dtype(at::toOpMathType(p.gates.scalar_type())))
        : at::zeros({1, kParams, p.C}, p.gates.options().dtype(at::toOpMathType(p.gates.scalar_type())));
  }
  if (p.N * p.C * P == 0) return partial;
#if PF_EMU
  if (param_grads) partial.fill_(std::numeric_limits<double>::quiet_NaN());  // must all be written
#endif
  dispatch_variant<scalar_t>(cfg, [&](auto index_tag, auto cl_tag, auto peep_tag, auto vec_tag) {
    using index_t = decltype(index_tag);
    constexpr bool kCL = decltype(cl_tag)::value;
    constexpr bool kPeep = decltype(peep_tag)::value;
    constexpr int V = decltype(vec_tag)::value;
#if PF_EMU
    ::pf_emu::record(cfg.describe("convlstm_backward"));
#endif
    PF_LAUNCH(cfg.launch, convlstm_backward_kernel<scalar_t, state_t, index_t, kCL, kPeep, V>)(
        operand<const scalar_t, index_t>(p.grad_h.const_data_ptr<scalar_t>(), p.grad_h),
        operand<const state_t, index_t>(p.grad_c.const_data_ptr<state_t>(), p.grad_c),
        operand<const scalar_t, index_t>(p.gates.const_data_ptr<scalar_t>(), p.gates),
        operand<const state_t, index_t>(p.c_prev.const_data_ptr<state_t>(), p.c_prev),
        operand<scalar_t, index_t>(p.grad_gates.mutable_data_ptr<scalar_t>(), p.grad_gates),
        operand<state_t, index_t>(p.grad_c_prev.mutable_data_ptr<state_t>(), p.grad_c_prev),
        kPeep ? p.peephole.const_data_ptr<state_t>() : nullptr,
        param_grads ? partial.mutable_data_ptr<A>() : nullptr, static_cast<index_t>(p.N),
        static_cast<index_t>(p.C), static_cast<index_t>(P));
    check();
  });
  return partial;
}

}  // namespace convlstm
}  // namespace cuda
}  // namespace pyframepred
