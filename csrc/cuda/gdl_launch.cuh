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


// Whether an operand can be accessed a Pack at a time at every lane's first column: W stride 1,
// the row and image strides multiples of kV, and the data pointer aligned.
inline bool packable(const GdlBatch& batch, int64_t sH, int64_t sW, const void* data,
                     size_t elem_size) {
  if (sW != 1 || sH % kV != 0) return false;
  for (int k = 0; k < batch.ndim; ++k) {
    if (batch.stride[k] % kV != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(data) % (elem_size * kV) == 0;
}

template <typename T>
inline bool packable(const GdlOperand<T>& o) {
  return packable(o.batch, o.sH, o.sW, o.data, sizeof(T));
}

// The plan of the CUDA kernels (plan_gdl's). They read interleaved channels_last planes with a
// vector variant compiled for kInterleavedD channels and the element types of has_interleaved:
// other planes, and planes that cannot be read a Pack at a time, are copied to
// contiguous rows instead. Gradients written in the plan's layout are then packable too (fresh
// allocations, strides of pred's or dense ones).
inline GdlPlan plan(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS, const char* op) {
  GdlPlan p = plan_gdl(pred, target, alpha, reduction, op);
  if (!p.interleaved) return p;
  bool ok = p.d == kInterleavedD && has_interleaved(pred.element_size());
  for (const at::Tensor* t : {&p.pred, &p.target}) {
    const auto o = p.operand(t->const_data_ptr(), *t);
    ok = ok && packable(o.batch, o.sH, o.sW, o.data, t->element_size());
  }
  return ok ? p : plan_gdl(pred, target, alpha, reduction, op, /*allow_interleaved=*/false);
}

// 32-bit offsets inside an image, unless a test forces the 64-bit variant.
inline bool use_index32(bool fits32) { return fits32 && !launch_options().force_index64; }

// The access variant (the kernels' kD): element-wise (0), Packs of rows whose horizontal pairs
// are adjacent (1) or kInterleavedD apart (interleaved planes).
inline const char* variant_name(int kD) {
  return kD == 0 ? " strided" : (kD == 1 ? " pack" : " interleaved");
}

template <typename scalar_t, typename F>
inline void dispatch_layout(bool pack, int64_t d, F&& f) {
  if (!pack) {
    f(std::integral_constant<int, 0>{});
  } else if (d == 1) {
    f(std::integral_constant<int, 1>{});
  } else if constexpr (has_interleaved(sizeof(scalar_t))) {
    TORCH_INTERNAL_ASSERT(d == kInterleavedD, "no GDL kernel for interleaved planes of ", d,
                          " channels");
    f(std::integral_constant<int, kInterleavedD>{});
  } else {
    TORCH_INTERNAL_ASSERT(false, "no interleaved GDL kernel for this dtype");
  }
}

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
  const auto po = p.operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
  const auto to = p.operand(p.target.const_data_ptr<scalar_t>(), p.target);
  const bool pack = packable(po) && packable(to);
  TORCH_INTERNAL_ASSERT(pack || p.d == 1, "interleaved GDL planes need the vector variant");
  const bool i32 = use_index32(p.fits32);
  const A a = static_cast<A>(alpha);
  const LaunchCfg cfg = kernel_cfg<scalar_t>(q.groups, kThreads, stream);
  gdl_dispatch_power(alpha, [&](auto tag) {
    constexpr GdlPower kP = decltype(tag)::value;
    auto launch = [&](auto layout_tag, auto index_tag) {
      constexpr int kD = decltype(layout_tag)::value;
      using index_t = decltype(index_tag);
#if PF_EMU
      ::pf_emu::record(std::string("gdl_forward ") + power_name(kP) + variant_name(kD) +
                       (sizeof(index_t) == 4 ? " i32" : " i64"));
#endif
      PF_LAUNCH(cfg, gdl_forward_kernel<scalar_t, index_t, kP, kD>)(po, to, q, p.H, p.W, a,
                                                                        partial);
      check();
    };
    dispatch_layout<scalar_t>(pack, p.d, [&](auto layout_tag) {
      dispatch_index(i32, [&](auto index_tag) { launch(layout_tag, index_tag); });
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
  const bool i32 =
      use_index32(p.fits32 && p.fits32_for(gp.write) && (!target_grad || p.fits32_for(gt->write)));
  const Plan q = make_plan(p);
  const auto po = p.operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
  const auto to = p.operand(p.target.const_data_ptr<scalar_t>(), p.target);
  const auto gpo = p.operand(gp.write.mutable_data_ptr<scalar_t>(), gp.write);
  GdlOperand<scalar_t> gto;
  if (target_grad) gto = p.operand(gt->write.mutable_data_ptr<scalar_t>(), gt->write);
  const bool pack = packable(po) && packable(to) && packable(gpo) && (!target_grad || packable(gto));
  TORCH_INTERNAL_ASSERT(pack || p.d == 1, "interleaved GDL planes need the vector variant");
  const A a = static_cast<A>(alpha);
  const A* sc = scale.const_data_ptr<A>();
  const bool per_image = reduction == 0;
  const A divisor = reduction == 1 ? static_cast<A>(p.numel) : A(1);
  LaunchCfg cfg = kernel_cfg<scalar_t>(q.groups, kThreads, stream);
  cfg.static_smem = 0;
  gdl_dispatch_power(alpha, [&](auto tag) {
    constexpr GdlPower kP = decltype(tag)::value;
    auto launch = [&](auto target_tag, auto layout_tag, auto index_tag) {
      constexpr bool kTarget = decltype(target_tag)::value;
      constexpr int kD = decltype(layout_tag)::value;
      using index_t = decltype(index_tag);
#if PF_EMU
      ::pf_emu::record(std::string("gdl_backward ") + power_name(kP) + variant_name(kD) +
                       (sizeof(index_t) == 4 ? " i32" : " i64") + (kTarget ? " target" : ""));
#endif
      PF_LAUNCH(cfg, gdl_backward_kernel<scalar_t, index_t, kP, kTarget, kD>)(
          po, to, gpo, gto, q, p.H, p.W, a, sc, per_image, divisor);
      check();
    };
    dispatch_bool(target_grad, [&](auto target_tag) {
      dispatch_layout<scalar_t>(pack, p.d, [&](auto layout_tag) {
        dispatch_index(i32, [&](auto index_tag) { launch(target_tag, layout_tag, index_tag); });
      });
    });
  });
}

}  // namespace gdl
}  // namespace cuda
}  // namespace pyframepred
