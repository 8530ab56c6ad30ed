// Launch configuration and launch sequence of the GDL kernels, shared by the real launcher
// (gdl_cuda.cu, nvcc) and the emulated one (emu/gdl_emu.cpp, host compiler): work decomposition,
// grid and block, the template variant (power, vector or strided rows, 32/64-bit offsets, target
// gradient) and the kernel arguments are computed here once.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "gdl_host.h"
#include "gdl_kernels.cuh"

namespace pyframepred {
namespace cuda {
namespace gdl {

inline Plan make_plan(const GdlPlan& p) {
  Plan q;
  q.strips = (p.W + kStrip - 1) / kStrip;
  // Bands of 32 rows, fewer when that leaves too few warps to fill the GPU.
  int64_t rows = 32;
  while (rows > 4 && p.B * q.strips * ((p.H + rows - 1) / rows) < 8192) rows /= 2;
  q.rows = std::min<int64_t>(rows, p.H);
  q.bands = (p.H + q.rows - 1) / q.rows;
  q.items_per_image = q.strips * q.bands;
  q.groups_per_image = (q.items_per_image + kWarps - 1) / kWarps;
  q.groups = p.B * q.groups_per_image;
  return q;
}

inline int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>(n, kMaxBlocks)); }


// Whether `t` can be accessed a Pack at a time at every lane's first column: W stride 1, every
// other stride a multiple of kV, and the data pointer aligned.
template <typename scalar_t>
inline bool packable(const at::Tensor& t, const scalar_t* data) {
  if (t.stride(-1) != 1) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) % kV != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(data) % (sizeof(scalar_t) * kV) == 0;
}


// 32-bit offsets inside an image, unless a test forces the 64-bit variant.
inline bool use_index32(bool fits32) { return fits32 && !launch_options().force_index64; }

inline const char* power_name(GdlPower kP) {
  return kP == GdlPower::kOne ? "p1" : (kP == GdlPower::kTwo ? "p2" : "pgen");
}

template <typename scalar_t>
LaunchCfg kernel_cfg(int64_t blocks, int threads, cudaStream_t stream) {
  LaunchCfg c;
  c.grid = dim3(grid_for(blocks));
  c.block = dim3(threads);
  c.static_smem = sizeof(acc_t<scalar_t>) * (threads / 32);
  c.stream = stream;
  return c;
}

// The forward kernel: one partial sum per group of kWarps items into `partial` (q.groups values).
template <typename scalar_t, typename Check>
void launch_forward_partials(const GdlPlan& p, const Plan& q, double alpha,
                             acc_t<scalar_t>* partial, cudaStream_t stream, Check&& check) {
  using A = acc_t<scalar_t>;
  const auto po = gdl_operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
  const auto to = gdl_operand(p.target.const_data_ptr<scalar_t>(), p.target);
  const bool pack = packable(p.pred, po.data) && packable(p.target, to.data);
  const bool i32 = use_index32(p.fits32);
  const A a = static_cast<A>(alpha);
  const LaunchCfg cfg = kernel_cfg<scalar_t>(q.groups, kThreads, stream);
  gdl_dispatch_power(alpha, [&](auto tag) {
    constexpr GdlPower kP = decltype(tag)::value;
    auto launch = [&](auto pack_tag, auto index_tag) {
      constexpr bool kPack = decltype(pack_tag)::value;
      using index_t = decltype(index_tag);
#if PF_EMU
      ::pf_emu::record(std::string("gdl_forward ") + power_name(kP) + (kPack ? " pack" : " strided") +
                       (sizeof(index_t) == 4 ? " i32" : " i64"));
#endif
      PF_LAUNCH(cfg, gdl_forward_kernel<scalar_t, index_t, kP, kPack>)(po, to, q, p.H, p.W, a,
                                                                        partial);
      check();
    };
    dispatch_bool(pack, [&](auto pack_tag) {
      dispatch_index(i32, [&](auto index_tag) { launch(pack_tag, index_tag); });
    });
  });
}

// The finish kernel: out[o] = sum(partial[o * per_out .. (o + 1) * per_out)) / divisor.
template <typename scalar_t, typename Check>
void launch_finish(const acc_t<scalar_t>* partial, int64_t per_out, int64_t nout,
                   acc_t<scalar_t> divisor, scalar_t* out, cudaStream_t stream, Check&& check) {
  const LaunchCfg cfg = kernel_cfg<scalar_t>(nout, kFinishThreads, stream);
#if PF_EMU
  ::pf_emu::record("gdl_finish");
#endif
  PF_LAUNCH(cfg, gdl_finish_kernel<scalar_t>)(partial, per_out, nout, divisor, out);
  check();
}

// Forward: partial sums, then the finish kernel into `out` (the op's result tensor).
template <typename scalar_t, typename Check>
void launch_forward(const GdlPlan& p, double alpha, int64_t reduction, const at::Tensor& out,
                    cudaStream_t stream, Check&& check) {
  using A = acc_t<scalar_t>;
  const Plan q = make_plan(p);
  at::Tensor partial = at::empty({q.groups}, p.pred.options().dtype(at::toOpMathType(p.pred.scalar_type())));
  launch_forward_partials<scalar_t>(p, q, alpha, partial.mutable_data_ptr<A>(), stream, check);
  const int64_t nout = reduction == 0 ? p.B : 1;
  const int64_t per_out = reduction == 0 ? q.groups_per_image : q.groups;
  const A divisor = reduction == 1 ? static_cast<A>(p.numel) : A(1);
  launch_finish<scalar_t>(partial.const_data_ptr<A>(), per_out, nout, divisor,
                          out.mutable_data_ptr<scalar_t>(), stream, check);
}

// Backward into gp.write (and gt.write when target_grad); `scale` is gdl_grad_scale's vector.
template <typename scalar_t, typename Check>
void launch_backward(const GdlPlan& p, double alpha, int64_t reduction, const at::Tensor& scale,
                     const GdlGradOut& gp, const GdlGradOut* gt, cudaStream_t stream,
                     Check&& check) {
  using A = acc_t<scalar_t>;
  const bool target_grad = gt != nullptr;
  const bool i32 = use_index32(p.fits32 && gdl_fits32(gp.write) && (!target_grad || gdl_fits32(gt->write)));
  const Plan q = make_plan(p);
  const auto po = gdl_operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
  const auto to = gdl_operand(p.target.const_data_ptr<scalar_t>(), p.target);
  const auto gpo = gdl_operand(gp.write.mutable_data_ptr<scalar_t>(), gp.write);
  GdlOperand<scalar_t> gto;
  if (target_grad) gto = gdl_operand(gt->write.mutable_data_ptr<scalar_t>(), gt->write);
  const bool pack = packable(p.pred, po.data) && packable(p.target, to.data) &&
                    packable(gp.write, gpo.data) && (!target_grad || packable(gt->write, gto.data));
  const A a = static_cast<A>(alpha);
  const A* sc = scale.const_data_ptr<A>();
  const bool per_image = reduction == 0;
  const A divisor = reduction == 1 ? static_cast<A>(p.numel) : A(1);
  LaunchCfg cfg = kernel_cfg<scalar_t>(q.groups, kThreads, stream);
  cfg.static_smem = 0;
  gdl_dispatch_power(alpha, [&](auto tag) {
    constexpr GdlPower kP = decltype(tag)::value;
    auto launch = [&](auto target_tag, auto pack_tag, auto index_tag) {
      constexpr bool kTarget = decltype(target_tag)::value;
      constexpr bool kPack = decltype(pack_tag)::value;
      using index_t = decltype(index_tag);
#if PF_EMU
      ::pf_emu::record(std::string("gdl_backward ") + power_name(kP) + (kPack ? " pack" : " strided") +
                       (sizeof(index_t) == 4 ? " i32" : " i64") + (kTarget ? " target" : ""));
#endif
      PF_LAUNCH(cfg, gdl_backward_kernel<scalar_t, index_t, kP, kTarget, kPack>)(
          po, to, gpo, gto, q, p.H, p.W, a, sc, per_image, divisor);
      check();
    };
    dispatch_bool(target_grad, [&](auto target_tag) {
      dispatch_bool(pack, [&](auto pack_tag) {
        dispatch_index(i32, [&](auto index_tag) { launch(target_tag, pack_tag, index_tag); });
      });
    });
  });
}

}  // namespace gdl
}  // namespace cuda
}  // namespace pyframepred
