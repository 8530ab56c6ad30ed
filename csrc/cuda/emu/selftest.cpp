// Small kernels that check the execution model itself: barriers, shared memory, shuffles and
// votes, launch checks, barrier divergence and alignment faults (tests/test_cuda_emu.py), and the
// memory-access model's counts (tests/test_cuda_emu_memory.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "../common.cuh"

namespace pyframepred {
namespace cuda_emu {
namespace {

using cuda::LaunchCfg;

// out[b, t] = in[b, blockDim - 1 - t] through shared memory: wrong without the barrier.
__global__ void reverse_kernel(const float* in, float* out) {
  __shared__ float s[1024];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = s[n - 1 - t];
}

// Per lane: [shfl_up 1, shfl_down 3, shfl_xor 5, shfl from lane 7, warp_sum, ballot(odd)].
__global__ void warp_kernel(const float* in, float* out) {
  const int t = threadIdx.x + blockIdx.x * blockDim.x;
  const float v = in[t];
  float* o = out + t * 6;
  o[0] = __shfl_up_sync(cuda::kFullMask, v, 1);
  o[1] = __shfl_down_sync(cuda::kFullMask, v, 3);
  o[2] = __shfl_xor_sync(cuda::kFullMask, v, 5);
  o[3] = __shfl_sync(cuda::kFullMask, v, 7);
  o[4] = cuda::warp_sum(v);
  o[5] = static_cast<float>(__ballot_sync(cuda::kFullMask, (threadIdx.x & 1) != 0) == 0xaaaaaaaau);
}

// Block sum of 256 values per block, in thread 0.
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float scratch[8];
  const float s = cuda::block_sum<256>(in[blockIdx.x * 256 + threadIdx.x], scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

__global__ void noop_kernel(int) {}

// Half the threads wait at __syncthreads, the others at a shuffle: divergence.
__global__ void divergent_kernel(int) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    (void)__shfl_xor_sync(cuda::kFullMask, 1, 1);
  }
}

// Lanes 16..31 exit before a full-mask shuffle.
__global__ void exited_lane_kernel(int) {
  if (threadIdx.x >= 16) return;
  (void)__shfl_xor_sync(cuda::kFullMask, 1, 1);
}

// A 16-byte vector load at in + offset.
__global__ void vector_load_kernel(const float* in, float* out, int offset) {
  const cuda::Vec<float, 4> v = cuda::load_vec<float, 4>(in + offset);
  out[0] = v.v[0] + v.v[1] + v.v[2] + v.v[3];
}

// out[t] = in[t * stride] for the grid's threads t: a pattern whose requests and sectors are known
// (the memory-access model's own check).
__global__ void gather_kernel(const float* in, float* out, int stride) {
  const int t = threadIdx.x + blockIdx.x * blockDim.x;
  const float v = cuda::load_global(in + static_cast<int64_t>(t) * stride);
  cuda::store_global(out + t, v);
}

at::Tensor selftest(const std::string& name, const at::Tensor& in, int64_t bx, int64_t by,
                    int64_t gx, int64_t smem) {
  TORCH_CHECK(in.scalar_type() == at::kFloat && in.is_contiguous(), "selftest: float32 contiguous input");
  LaunchCfg cfg;
  cfg.grid = dim3(static_cast<unsigned>(gx));
  cfg.block = dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  cfg.smem = static_cast<size_t>(smem);
  if (name == "reverse") {
    at::Tensor out = at::full_like(in, std::nanf(""));
    cfg.static_smem = sizeof(float) * 1024;
    PF_LAUNCH(cfg, reverse_kernel)(in.const_data_ptr<float>(), out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "warp") {
    at::Tensor out = at::full({in.numel(), 6}, std::nanf(""), in.options());
    PF_LAUNCH(cfg, warp_kernel)(in.const_data_ptr<float>(), out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "block_sum") {
    at::Tensor out = at::full({gx}, std::nanf(""), in.options());
    cfg.static_smem = sizeof(float) * 8;
    PF_LAUNCH(cfg, block_sum_kernel)(in.const_data_ptr<float>(), out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "vector_load") {
    at::Tensor out = at::zeros({1}, in.options());
    PF_LAUNCH(cfg, vector_load_kernel)(in.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                       static_cast<int>(by));
    return out;
  }
  if (name == "gather") {  // by: the stride
    const int64_t threads = bx * gx;
    TORCH_CHECK(by >= 0 && (threads - 1) * by < in.numel(), "selftest gather: input too short");
    cfg.block = dim3(static_cast<unsigned>(bx));
    at::Tensor out = at::full({threads}, std::nanf(""), in.options());
    PF_LAUNCH(cfg, gather_kernel)(in.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                  static_cast<int>(by));
    return out;
  }
  if (name == "noop") {
    cfg.block = dim3(static_cast<unsigned>(bx), 1, static_cast<unsigned>(by));
    cfg.grid = dim3(1, static_cast<unsigned>(gx), 1);
    PF_LAUNCH(cfg, noop_kernel)(0);
  } else if (name == "divergent") {
    PF_LAUNCH(cfg, divergent_kernel)(0);
  } else if (name == "exited_lane") {
    PF_LAUNCH(cfg, exited_lane_kernel)(0);
  } else {
    TORCH_CHECK(false, "selftest: unknown kernel ", name);
  }
  return at::empty({0}, in.options());
}

}  // namespace
}  // namespace cuda_emu
}  // namespace pyframepred

TORCH_LIBRARY_FRAGMENT(pyframepred_emu, m) {
  m.def("selftest(str name, Tensor input, int bx, int by, int gx, int smem) -> Tensor",
        &pyframepred::cuda_emu::selftest);
}
