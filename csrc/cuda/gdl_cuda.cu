// CUDA kernels of the fused gradient difference loss: one pass forward, one pass backward.
//
// Each image (B of them, see gdl_host.h) is cut in tiles of kTileH x kTileW pixels; a block of
// kBX x kBY threads handles one tile at a time (grid-stride over the B * tiles work items), each
// thread kRows x kCols pixels, a warp reading 32 consecutive pixels of a row. The per-element
// math is the shared gdl.h, exactly what the CPU kernels run.
//
// Forward: every pixel adds the terms of its pairs with the left and upper neighbours (loaded
// through L1: each element comes from DRAM once); a CUB block reduction writes one partial sum
// per work item, and a second small kernel sums the partials of each output in a fixed order, so
// the result depends on the shape only: bit-identical run after run.
// Backward (gather form, no atomics): every pixel recomputes the coefficients of its up to four
// pairs and writes its gradient (and the target's) once.
//
// Offsets inside an image use 32-bit arithmetic when they fit, 64-bit otherwise; image offsets
// are always 64-bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/cub.cuh>

#include <algorithm>
#include <cstdint>

#include "gdl.h"
#include "gdl_host.h"

namespace pyframepred {
namespace cuda {
namespace {

constexpr int kBX = 32, kBY = 8, kThreads = kBX * kBY;
constexpr int kCols = 2, kRows = 4;  // pixels per thread
constexpr int kTileW = kBX * kCols, kTileH = kBY * kRows;
constexpr int kFinishThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

template <typename T>
struct TypeTag {
  using type = T;
};

// Work items: image b, tile (ty, tx).
struct Tiling {
  int64_t items, per_image, x_tiles;
};

inline Tiling make_tiling(const GdlPlan& p) {
  Tiling t;
  t.x_tiles = (p.W + kTileW - 1) / kTileW;
  t.per_image = ((p.H + kTileH - 1) / kTileH) * t.x_tiles;
  t.items = p.B * t.per_image;
  return t;
}

inline int grid_for(int64_t items) {
  return static_cast<int>(std::min<int64_t>(items, kMaxBlocks));
}

template <typename scalar_t, typename index_t, GdlPower kP>
__global__ void __launch_bounds__(kThreads)
    gdl_forward_kernel(const GdlOperand<const scalar_t> p, const GdlOperand<const scalar_t> t,
                       const Tiling tiling, const index_t H, const index_t W,
                       const acc_t<scalar_t> alpha, acc_t<scalar_t>* __restrict__ partial) {
  using A = acc_t<scalar_t>;
  using Reduce = cub::BlockReduce<A, kBX, cub::BLOCK_REDUCE_WARP_REDUCTIONS, kBY>;
  __shared__ typename Reduce::TempStorage tmp;
  const index_t psH = static_cast<index_t>(p.sH), psW = static_cast<index_t>(p.sW);
  const index_t tsH = static_cast<index_t>(t.sH), tsW = static_cast<index_t>(t.sW);
  for (int64_t item = blockIdx.x; item < tiling.items; item += gridDim.x) {
    const int64_t b = item / tiling.per_image;
    const int64_t r = item - b * tiling.per_image;
    const index_t ty = static_cast<index_t>(r / tiling.x_tiles);
    const index_t tx = static_cast<index_t>(r - static_cast<int64_t>(ty) * tiling.x_tiles);
    const scalar_t* P = p.data + p.batch.offset(b);
    const scalar_t* T = t.data + t.batch.offset(b);
    A acc = A(0);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const index_t y = ty * kTileH + static_cast<index_t>(threadIdx.y) + i * kBY;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const index_t x = tx * kTileW + static_cast<index_t>(threadIdx.x) + j * kBX;
        if (y < H && x < W) {
          const index_t po = y * psH + x * psW, to = y * tsH + x * tsW;
          const A pc = static_cast<A>(P[po]), tc = static_cast<A>(T[to]);
          if (x > 0) {
            acc += gdl_term<kP>(tc - static_cast<A>(T[to - tsW]), pc - static_cast<A>(P[po - psW]),
                                alpha);
          }
          if (y > 0) {
            acc += gdl_term<kP>(tc - static_cast<A>(T[to - tsH]), pc - static_cast<A>(P[po - psH]),
                                alpha);
          }
        }
      }
    }
    const A total = Reduce(tmp).Sum(acc);
    if (threadIdx.x == 0 && threadIdx.y == 0) partial[item] = total;
    __syncthreads();  // tmp is reused by the next item
  }
}

// out[o] = (sum of partial[o * per_out .. (o + 1) * per_out)) / divisor, in a fixed order.
template <typename scalar_t>
__global__ void __launch_bounds__(kFinishThreads)
    gdl_finish_kernel(const acc_t<scalar_t>* __restrict__ partial, const int64_t per_out,
                      const int64_t nout, const acc_t<scalar_t> divisor,
                      scalar_t* __restrict__ out) {
  using A = acc_t<scalar_t>;
  using Reduce = cub::BlockReduce<A, kFinishThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  for (int64_t o = blockIdx.x; o < nout; o += gridDim.x) {
    const A* src = partial + o * per_out;
    A acc = A(0);
    for (int64_t i = threadIdx.x; i < per_out; i += kFinishThreads) acc += src[i];
    const A total = Reduce(tmp).Sum(acc);
    if (threadIdx.x == 0) out[o] = static_cast<scalar_t>(total / divisor);
    __syncthreads();
  }
}

template <typename scalar_t, typename index_t, GdlPower kP, bool kTarget>
__global__ void __launch_bounds__(kThreads)
    gdl_backward_kernel(const GdlOperand<const scalar_t> p, const GdlOperand<const scalar_t> t,
                        const GdlOperand<scalar_t> gp, const GdlOperand<scalar_t> gt,
                        const Tiling tiling, const index_t H, const index_t W,
                        const acc_t<scalar_t> alpha, const acc_t<scalar_t>* __restrict__ scale,
                        const bool per_image, const acc_t<scalar_t> divisor) {
  using A = acc_t<scalar_t>;
  const index_t psH = static_cast<index_t>(p.sH), psW = static_cast<index_t>(p.sW);
  const index_t tsH = static_cast<index_t>(t.sH), tsW = static_cast<index_t>(t.sW);
  const index_t gpH = static_cast<index_t>(gp.sH), gpW = static_cast<index_t>(gp.sW);
  const index_t gtH = static_cast<index_t>(gt.sH), gtW = static_cast<index_t>(gt.sW);
  for (int64_t item = blockIdx.x; item < tiling.items; item += gridDim.x) {
    const int64_t b = item / tiling.per_image;
    const int64_t r = item - b * tiling.per_image;
    const index_t ty = static_cast<index_t>(r / tiling.x_tiles);
    const index_t tx = static_cast<index_t>(r - static_cast<int64_t>(ty) * tiling.x_tiles);
    const scalar_t* P = p.data + p.batch.offset(b);
    const scalar_t* T = t.data + t.batch.offset(b);
    scalar_t* GP = gp.data + gp.batch.offset(b);
    scalar_t* GT = kTarget ? gt.data + gt.batch.offset(b) : nullptr;
    const A s = scale[per_image ? b : 0] / divisor;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const index_t y = ty * kTileH + static_cast<index_t>(threadIdx.y) + i * kBY;
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const index_t x = tx * kTileW + static_cast<index_t>(threadIdx.x) + j * kBX;
        if (y < H && x < W) {
          const index_t po = y * psH + x * psW, to = y * tsH + x * tsW;
          const A pc = static_cast<A>(P[po]), tc = static_cast<A>(T[to]);
          A up_p = A(0), down_p = A(0), left_p = A(0), right_p = A(0);
          A up_t = A(0), down_t = A(0), left_t = A(0), right_t = A(0);
          A cp = A(0), ct = A(0);
          if (y > 0) {
            gdl_coef<kP, kTarget>(tc - static_cast<A>(T[to - tsH]),
                                  pc - static_cast<A>(P[po - psH]), alpha, cp, ct);
            up_p = cp;
            up_t = ct;
          }
          if (y + 1 < H) {
            gdl_coef<kP, kTarget>(static_cast<A>(T[to + tsH]) - tc,
                                  static_cast<A>(P[po + psH]) - pc, alpha, cp, ct);
            down_p = cp;
            down_t = ct;
          }
          if (x > 0) {
            gdl_coef<kP, kTarget>(tc - static_cast<A>(T[to - tsW]),
                                  pc - static_cast<A>(P[po - psW]), alpha, cp, ct);
            left_p = cp;
            left_t = ct;
          }
          if (x + 1 < W) {
            gdl_coef<kP, kTarget>(static_cast<A>(T[to + tsW]) - tc,
                                  static_cast<A>(P[po + psW]) - pc, alpha, cp, ct);
            right_p = cp;
            right_t = ct;
          }
          GP[y * gpH + x * gpW] =
              static_cast<scalar_t>(gdl_gather(up_p, down_p, left_p, right_p, s));
          if constexpr (kTarget) {
            GT[y * gtH + x * gtW] =
                static_cast<scalar_t>(gdl_gather(up_t, down_t, left_t, right_t, s));
          }
        }
      }
    }
  }
}

at::Tensor gdl_loss_forward_cuda(const at::Tensor& pred, const at::Tensor& target, double alpha,
                                 int64_t reduction) {
  const GdlPlan p = plan_gdl(pred, target, alpha, reduction, "gdl_loss_forward");
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor out = gdl_forward_output(pred, reduction);
  const Tiling tiling = make_tiling(p);
  const auto acc_dtype = at::toOpMathType(pred.scalar_type());
  at::Tensor partial = at::empty({tiling.items}, pred.options().dtype(acc_dtype));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(),
                                  "gdl_loss_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto po = gdl_operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
    const auto to = gdl_operand(p.target.const_data_ptr<scalar_t>(), p.target);
    const A a = static_cast<A>(alpha);
    A* part = partial.mutable_data_ptr<A>();
    gdl_dispatch_power(alpha, [&](auto tag) {
      constexpr GdlPower kP = decltype(tag)::value;
      if (p.fits32) {
        gdl_forward_kernel<scalar_t, int32_t, kP>
            <<<grid_for(tiling.items), dim3(kBX, kBY), 0, stream>>>(
                po, to, tiling, static_cast<int32_t>(p.H), static_cast<int32_t>(p.W), a, part);
      } else {
        gdl_forward_kernel<scalar_t, int64_t, kP>
            <<<grid_for(tiling.items), dim3(kBX, kBY), 0, stream>>>(po, to, tiling, p.H, p.W, a,
                                                                    part);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    const int64_t nout = reduction == 0 ? p.B : 1;
    const int64_t per_out = reduction == 0 ? tiling.per_image : tiling.items;
    const A divisor = reduction == 1 ? static_cast<A>(p.numel) : A(1);
    gdl_finish_kernel<scalar_t><<<grid_for(nout), kFinishThreads, 0, stream>>>(
        part, per_out, nout, divisor, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gdl_loss_backward_cuda(const at::Tensor& grad_out,
                                                          const at::Tensor& pred,
                                                          const at::Tensor& target, double alpha,
                                                          int64_t reduction, bool target_grad) {
  constexpr const char* op = "gdl_loss_backward";
  const GdlPlan p = plan_gdl(pred, target, alpha, reduction, op);
  const c10::cuda::CUDAGuard guard(pred.device());
  const at::Tensor scale = gdl_grad_scale(grad_out, pred, reduction, op);
  GdlGradOut gp = gdl_grad_output(pred);
  GdlGradOut gt;
  if (target_grad) gt = gdl_grad_output(target);
  const bool fits32 =
      p.fits32 && gdl_fits32(gp.write) && (!target_grad || gdl_fits32(gt.write));
  const Tiling tiling = make_tiling(p);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(),
                                  "gdl_loss_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto po = gdl_operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
    const auto to = gdl_operand(p.target.const_data_ptr<scalar_t>(), p.target);
    const auto gpo = gdl_operand(gp.write.mutable_data_ptr<scalar_t>(), gp.write);
    GdlOperand<scalar_t> gto;
    if (target_grad) gto = gdl_operand(gt.write.mutable_data_ptr<scalar_t>(), gt.write);
    const A a = static_cast<A>(alpha);
    const A* sc = scale.const_data_ptr<A>();
    const bool per_image = reduction == 0;
    const A divisor = reduction == 1 ? static_cast<A>(p.numel) : A(1);
    const int grid = grid_for(tiling.items);
    gdl_dispatch_power(alpha, [&](auto tag) {
      constexpr GdlPower kP = decltype(tag)::value;
      auto launch = [&](auto target_tag, auto index_tag) {
        constexpr bool kTarget = decltype(target_tag)::value;
        using index_t = typename decltype(index_tag)::type;
        gdl_backward_kernel<scalar_t, index_t, kP, kTarget><<<grid, dim3(kBX, kBY), 0, stream>>>(
            po, to, gpo, gto, tiling, static_cast<index_t>(p.H), static_cast<index_t>(p.W), a, sc,
            per_image, divisor);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      using I32 = TypeTag<int32_t>;
      using I64 = TypeTag<int64_t>;
      if (target_grad) {
        fits32 ? launch(std::true_type{}, I32{}) : launch(std::true_type{}, I64{});
      } else {
        fits32 ? launch(std::false_type{}, I32{}) : launch(std::false_type{}, I64{});
      }
    });
  });
  gdl_finish_grad(gp);
  if (!target_grad) return {gp.result, at::empty({0}, pred.options())};
  gdl_finish_grad(gt);
  return {gp.result, gt.result};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(pyframepred, CUDA, m) {
  m.impl("gdl_loss_forward", &cuda::gdl_loss_forward_cuda);
  m.impl("gdl_loss_backward", &cuda::gdl_loss_backward_cuda);
}

}  // namespace pyframepred
