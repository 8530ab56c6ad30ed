// CUDA kernels of the fused ConvLSTM cell: one pass forward, one pass backward.
//
// A block of 32x8 threads covers a tile of (channels x positions) of one sample at a time and
// loops over the samples. In NCHW memory the 32 lanes of a warp walk positions (coalesced) and
// the 8 warps take 8 channels; in channels_last memory the lanes walk channels and the warps
// positions. Every thread therefore keeps one channel, which lets backward sum the bias and
// peephole gradients per channel in registers, then across the block in shared memory, into
// per-block partial sums (no atomics: the result is deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "convlstm.h"
#include "convlstm_host.h"

namespace pyframepred {
namespace cuda {
namespace {

constexpr int kBX = 32;    // lanes
constexpr int kBY = 8;     // warps per block
constexpr int kIter = 8;   // positions per thread per sample

// A strided (N, K, P) operand. `gate` is the step between gate blocks (C channels).
template <typename T, typename index_t>
struct Operand {
  T* data;
  index_t sN, sC, sP;
  __device__ __forceinline__ T* at(index_t n, index_t ch, index_t p) const {
    return data + n * sN + ch * sC + p * sP;
  }
};

template <typename T, typename index_t>
Operand<T, index_t> operand(T* data, const at::Tensor& t) {
  const View3 v = view3_strides(t);
  return Operand<T, index_t>{data, static_cast<index_t>(v.sN), static_cast<index_t>(v.sC),
                             static_cast<index_t>(v.sP)};
}

// Largest element offset reachable in t's (N, K, P) view, to choose 32- or 64-bit indexing.
int64_t max_offset(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return 0;
  const View3 v = view3_strides(t);
  return (t.size(0) - 1) * std::abs(v.sN) + (t.size(1) - 1) * std::abs(v.sC) +
         (t.size(2) * t.size(3) - 1) * std::abs(v.sP);
}

template <bool kCL>
struct Tile {
  static constexpr int kChannels = kCL ? kBX : kBY;   // channels per block
  static constexpr int kPStep = kCL ? kBY : kBX;      // position step between iterations
  static constexpr int kPositions = kPStep * kIter;   // positions per block
  __device__ __forceinline__ static int channel_lane() { return kCL ? threadIdx.x : threadIdx.y; }
  __device__ __forceinline__ static int position_lane() { return kCL ? threadIdx.y : threadIdx.x; }
};

template <typename scalar_t, typename index_t, bool kCL, bool kPeep>
__global__ void __launch_bounds__(kBX * kBY)
convlstm_forward_kernel(Operand<const scalar_t, index_t> xg, Operand<const scalar_t, index_t> hg,
                        Operand<const scalar_t, index_t> cp, Operand<scalar_t, index_t> h,
                        Operand<scalar_t, index_t> c, Operand<scalar_t, index_t> gates,
                        const scalar_t* __restrict__ bias, const scalar_t* __restrict__ peep,
                        bool has_h, bool save, index_t N, index_t C, index_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  using Tl = Tile<kCL>;
  const index_t ch = static_cast<index_t>(blockIdx.y) * Tl::kChannels + Tl::channel_lane();
  if (ch >= C) return;
  const index_t p_begin = static_cast<index_t>(blockIdx.x) * Tl::kPositions + Tl::position_lane();
  acc_t b[4] = {0, 0, 0, 0};
  if (bias != nullptr) {
#pragma unroll
    for (int k = 0; k < 4; ++k) b[k] = static_cast<acc_t>(bias[k * C + ch]);
  }
  acc_t wci = 0, wcf = 0, wco = 0;
  if constexpr (kPeep) {
    wci = static_cast<acc_t>(peep[ch]);
    wcf = static_cast<acc_t>(peep[C + ch]);
    wco = static_cast<acc_t>(peep[2 * C + ch]);
  }
  for (index_t n = blockIdx.z; n < N; n += gridDim.z) {
#pragma unroll
    for (int it = 0; it < kIter; ++it) {
      const index_t p = p_begin + it * Tl::kPStep;
      if (p >= P) break;
      acc_t g4[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        g4[k] = static_cast<acc_t>(*xg.at(n, k * C + ch, p)) + b[k];
        if (has_h) g4[k] += static_cast<acc_t>(*hg.at(n, k * C + ch, p));
      }
      const acc_t c_prev = static_cast<acc_t>(*cp.at(n, ch, p));
      acc_t i, f, g, o, cn, hn;
      convlstm_cell_forward<acc_t, kPeep>(g4[0], g4[1], g4[2], g4[3], c_prev, wci, wcf, wco, i, f,
                                          g, o, cn, hn);
      *h.at(n, ch, p) = static_cast<scalar_t>(hn);
      *c.at(n, ch, p) = static_cast<scalar_t>(cn);
      if (save) {
        *gates.at(n, ch, p) = static_cast<scalar_t>(i);
        *gates.at(n, C + ch, p) = static_cast<scalar_t>(f);
        *gates.at(n, 2 * C + ch, p) = static_cast<scalar_t>(g);
        *gates.at(n, 3 * C + ch, p) = static_cast<scalar_t>(o);
      }
    }
  }
}

template <typename scalar_t, typename index_t, bool kCL, bool kPeep>
__global__ void __launch_bounds__(kBX * kBY)
convlstm_backward_kernel(Operand<const scalar_t, index_t> gh, Operand<const scalar_t, index_t> gc,
                         Operand<const scalar_t, index_t> gates,
                         Operand<const scalar_t, index_t> cp, Operand<scalar_t, index_t> dgates,
                         Operand<scalar_t, index_t> dcp, const scalar_t* __restrict__ peep,
                         at::opmath_type<scalar_t>* __restrict__ partial, index_t N, index_t C,
                         index_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  using Tl = Tile<kCL>;
  const index_t ch = static_cast<index_t>(blockIdx.y) * Tl::kChannels + Tl::channel_lane();
  const bool active = ch < C;
  const index_t p_begin = static_cast<index_t>(blockIdx.x) * Tl::kPositions + Tl::position_lane();
  acc_t wci = 0, wcf = 0, wco = 0;
  if constexpr (kPeep) {
    if (active) {
      wci = static_cast<acc_t>(peep[ch]);
      wcf = static_cast<acc_t>(peep[C + ch]);
      wco = static_cast<acc_t>(peep[2 * C + ch]);
    }
  }
  acc_t q[7] = {0, 0, 0, 0, 0, 0, 0};
  if (active) {
    for (index_t n = blockIdx.z; n < N; n += gridDim.z) {
#pragma unroll
      for (int it = 0; it < kIter; ++it) {
        const index_t p = p_begin + it * Tl::kPStep;
        if (p >= P) break;
        const acc_t i = static_cast<acc_t>(*gates.at(n, ch, p));
        const acc_t f = static_cast<acc_t>(*gates.at(n, C + ch, p));
        const acc_t g = static_cast<acc_t>(*gates.at(n, 2 * C + ch, p));
        const acc_t o = static_cast<acc_t>(*gates.at(n, 3 * C + ch, p));
        const acc_t c_prev = static_cast<acc_t>(*cp.at(n, ch, p));
        const acc_t dh = static_cast<acc_t>(*gh.at(n, ch, p));
        const acc_t dc = static_cast<acc_t>(*gc.at(n, ch, p));
        acc_t di, df, dg, do_, dc_prev, c;
        convlstm_cell_backward<acc_t, kPeep>(i, f, g, o, c_prev, dh, dc, wci, wcf, wco, di, df,
                                             dg, do_, dc_prev, c);
        *dgates.at(n, ch, p) = static_cast<scalar_t>(di);
        *dgates.at(n, C + ch, p) = static_cast<scalar_t>(df);
        *dgates.at(n, 2 * C + ch, p) = static_cast<scalar_t>(dg);
        *dgates.at(n, 3 * C + ch, p) = static_cast<scalar_t>(do_);
        *dcp.at(n, ch, p) = static_cast<scalar_t>(dc_prev);
        if (partial != nullptr) {
          q[0] += di;
          q[1] += df;
          q[2] += dg;
          q[3] += do_;
          if constexpr (kPeep) {
            q[4] += di * c_prev;
            q[5] += df * c_prev;
            q[6] += do_ * c;
          }
        }
      }
    }
  }
  if (partial == nullptr) return;  // uniform across the grid
  // Sum the threads that share a channel, in a fixed order.
  __shared__ acc_t red[7][kBY][kBX];
#pragma unroll
  for (int k = 0; k < 7; ++k) red[k][threadIdx.y][threadIdx.x] = q[k];
  __syncthreads();
  const bool leader = kCL ? threadIdx.y == 0 : threadIdx.x == 0;
  if (!leader || !active) return;
  acc_t* out = partial + (static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x) * 7 * C + ch;
#pragma unroll
  for (int k = 0; k < 7; ++k) {
    acc_t s = 0;
    if constexpr (kCL) {
      for (int y = 0; y < kBY; ++y) s += red[k][y][threadIdx.x];
    } else {
      for (int x = 0; x < kBX; ++x) s += red[k][threadIdx.y][x];
    }
    out[k * C] = s;
  }
}

template <bool kCL>
dim3 grid_for(int64_t N, int64_t C, int64_t P) {
  using Tl = Tile<kCL>;
  const int64_t gx = (P + Tl::kPositions - 1) / Tl::kPositions;
  const int64_t gy = (C + Tl::kChannels - 1) / Tl::kChannels;
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535,
              "convlstm_gates: frame or channel count too large for one launch (C = ",
              std::to_string(C), ", H*W = ", std::to_string(P), ")");
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
              static_cast<unsigned>(std::min<int64_t>(N, 65535)));
}

// Calls launch(index_tag, cl_tag, peep_tag) with the compile-time variant matching the run-time
// flags: 32- or 64-bit indexing, channels-fastest iteration, peephole weights.
template <typename Launch>
void dispatch_variants(bool i32, bool cl, bool peep, Launch&& launch) {
  auto with_peep = [&](auto index_tag, auto cl_tag) {
    if (peep) {
      launch(index_tag, cl_tag, std::true_type{});
    } else {
      launch(index_tag, cl_tag, std::false_type{});
    }
  };
  auto with_layout = [&](auto index_tag) {
    if (cl) {
      with_peep(index_tag, std::true_type{});
    } else {
      with_peep(index_tag, std::false_type{});
    }
  };
  if (i32) {
    with_layout(int32_t{});
  } else {
    with_layout(int64_t{});
  }
}

bool fits_int32(std::initializer_list<at::Tensor> ts) {
  for (const auto& t : ts) {
    if (max_offset(t) >= std::numeric_limits<int32_t>::max()) return false;
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convlstm_gates_forward_cuda(
    const at::Tensor& x_gates, const std::optional<at::Tensor>& h_gates, const at::Tensor& c_prev,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& peephole,
    bool save_gates) {
  auto p = plan_convlstm_forward(x_gates, h_gates, c_prev, bias, peephole, save_gates);
  const int64_t P = p.H * p.W;
  if (p.N * p.C * P == 0) return {p.h, p.c, p.gates};
  c10::cuda::CUDAGuard guard(x_gates.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool i32 = fits_int32({p.x_gates, p.h_gates, p.c_prev, p.h, p.c, p.gates});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_gates.scalar_type(),
                                  "convlstm_gates_forward_cuda", [&] {
    auto launch = [&](auto index_tag, auto cl_tag, auto peep_tag) {
      using index_t = decltype(index_tag);
      constexpr bool kCL = decltype(cl_tag)::value;
      constexpr bool kPeep = decltype(peep_tag)::value;
      const auto xg = operand<const scalar_t, index_t>(p.x_gates.const_data_ptr<scalar_t>(), p.x_gates);
      const auto hg = p.h_gates.defined()
          ? operand<const scalar_t, index_t>(p.h_gates.const_data_ptr<scalar_t>(), p.h_gates)
          : xg;
      const auto gates = save_gates
          ? operand<scalar_t, index_t>(p.gates.mutable_data_ptr<scalar_t>(), p.gates)
          : Operand<scalar_t, index_t>{nullptr, 0, 0, 0};
      convlstm_forward_kernel<scalar_t, index_t, kCL, kPeep>
          <<<grid_for<kCL>(p.N, p.C, P), dim3(kBX, kBY), 0, stream>>>(
              xg, hg, operand<const scalar_t, index_t>(p.c_prev.const_data_ptr<scalar_t>(), p.c_prev),
              operand<scalar_t, index_t>(p.h.mutable_data_ptr<scalar_t>(), p.h),
              operand<scalar_t, index_t>(p.c.mutable_data_ptr<scalar_t>(), p.c), gates,
              p.bias.defined() ? p.bias.const_data_ptr<scalar_t>() : nullptr,
              kPeep ? p.peephole.const_data_ptr<scalar_t>() : nullptr, p.h_gates.defined(),
              save_gates, static_cast<index_t>(p.N), static_cast<index_t>(p.C),
              static_cast<index_t>(P));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    dispatch_variants(i32, p.cl, p.peephole.defined(), launch);
  });
  return {p.h, p.c, p.gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> convlstm_gates_backward_cuda(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& gates,
    const at::Tensor& c_prev, const std::optional<at::Tensor>& peephole, bool param_grads) {
  auto p = plan_convlstm_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  const int64_t P = p.H * p.W;
  const bool peep = p.peephole.defined();
  c10::cuda::CUDAGuard guard(gates.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid = p.cl ? grid_for<true>(p.N, p.C, std::max<int64_t>(P, 1))
                         : grid_for<false>(p.N, p.C, std::max<int64_t>(P, 1));
  at::Tensor partial;
  if (param_grads) {
    partial = at::zeros({static_cast<int64_t>(grid.z) * grid.x, 7, p.C},
                        gates.options().dtype(at::toOpMathType(gates.scalar_type())));
  }
  const bool i32 = fits_int32({p.grad_h, p.grad_c, p.gates, p.c_prev, p.grad_gates, p.grad_c_prev});
  if (p.N * p.C * P > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                    "convlstm_gates_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto launch = [&](auto index_tag, auto cl_tag, auto peep_tag) {
        using index_t = decltype(index_tag);
        constexpr bool kCL = decltype(cl_tag)::value;
        constexpr bool kPeep = decltype(peep_tag)::value;
        convlstm_backward_kernel<scalar_t, index_t, kCL, kPeep><<<grid, dim3(kBX, kBY), 0, stream>>>(
            operand<const scalar_t, index_t>(p.grad_h.const_data_ptr<scalar_t>(), p.grad_h),
            operand<const scalar_t, index_t>(p.grad_c.const_data_ptr<scalar_t>(), p.grad_c),
            operand<const scalar_t, index_t>(p.gates.const_data_ptr<scalar_t>(), p.gates),
            operand<const scalar_t, index_t>(p.c_prev.const_data_ptr<scalar_t>(), p.c_prev),
            operand<scalar_t, index_t>(p.grad_gates.mutable_data_ptr<scalar_t>(), p.grad_gates),
            operand<scalar_t, index_t>(p.grad_c_prev.mutable_data_ptr<scalar_t>(), p.grad_c_prev),
            kPeep ? p.peephole.const_data_ptr<scalar_t>() : nullptr,
            param_grads ? partial.mutable_data_ptr<acc_t>() : nullptr, static_cast<index_t>(p.N),
            static_cast<index_t>(p.C), static_cast<index_t>(P));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      dispatch_variants(i32, p.cl, peep, launch);
    });
  }
  at::Tensor grad_params = param_grads ? finish_param_grads(partial, gates.scalar_type())
                                        : at::empty({0}, gates.options());
  return {p.grad_gates, p.grad_c_prev, grad_params};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(pyframepred, CUDA, m) {
  m.impl("convlstm_gates_forward", &cuda::convlstm_gates_forward_cuda);
  m.impl("convlstm_gates_backward", &cuda::convlstm_gates_backward_cuda);
}

}  // namespace pyframepred
