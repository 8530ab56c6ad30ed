// CTest check for LibTorch users: link libpyframepred_ops, call the ops through the public header
// <pyframepred/ops.h>, and compare values and gradients with straightforward computations written
// with ATen ops -- on the CPU, and on the GPU too when the library was built with the CUDA
// kernels (PYFRAMEPRED_WITH_CUDA) and one is present.
#include <pyframepred/ops.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect_close(const at::Tensor& a, const at::Tensor& b, const char* what, double tol = 1e-5) {
  const double err = (a - b).abs().max().item<double>();
  std::printf("%-32s max abs error %.3g\n", what, err);
  if (!(err < tol)) ++failures;
}

void expect(bool ok, const char* what) {
  std::printf("%-32s %s\n", what, ok ? "yes" : "NO");
  if (!ok) ++failures;
}

std::tuple<at::Tensor, at::Tensor> cell_reference(const at::Tensor& xg, const at::Tensor& hg,
                                                  const at::Tensor& cp, const at::Tensor& bias,
                                                  const at::Tensor& peep) {
  auto gates = (xg + hg + bias.view({1, -1, 1, 1})).chunk(4, 1);  // i, f, g, o
  auto w = [&](int k) { return peep[k].view({1, -1, 1, 1}); };
  at::Tensor i = at::sigmoid(gates[0] + w(0) * cp);
  at::Tensor f = at::sigmoid(gates[1] + w(1) * cp);
  at::Tensor g = at::tanh(gates[2]);
  at::Tensor c = f * cp + i * g;
  at::Tensor o = at::sigmoid(gates[3] + w(2) * c);
  return {o * at::tanh(c), c};
}

at::Tensor gdl_reference(const at::Tensor& p, const at::Tensor& t) {  // alpha 1, sum
  const int64_t H = p.size(-2), W = p.size(-1);
  auto dy = [&](const at::Tensor& x) { return (x.narrow(-2, 1, H - 1) - x.narrow(-2, 0, H - 1)).abs(); };
  auto dx = [&](const at::Tensor& x) { return (x.narrow(-1, 1, W - 1) - x.narrow(-1, 0, W - 1)).abs(); };
  return (dy(t) - dy(p)).abs().sum() + (dx(t) - dx(p)).abs().sum();
}

void check_device(const at::Device& device) {
  std::printf("-- %s\n", device.str().c_str());
  at::manual_seed(0);
  const int64_t N = 2, C = 5, H = 7, W = 9;
  auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  at::Tensor xg = at::randn({N, 4 * C, H, W}, opts).requires_grad_();
  at::Tensor hg = at::randn({N, 4 * C, H, W}, opts).requires_grad_();
  at::Tensor cp = at::randn({N, C, H, W}, opts).requires_grad_();
  at::Tensor bias = at::randn({4 * C}, opts).requires_grad_();
  at::Tensor peep = at::randn({3, C}, opts).requires_grad_();
  std::vector<at::Tensor> inputs = {xg, hg, cp, bias, peep};

  // ConvLSTM cell: values and every gradient, NCHW and channels_last.
  auto [h, c] = cell_reference(xg, hg, cp, bias, peep);
  auto [h1, c1] = pyframepred::convlstm_gates(xg, hg, cp, bias, peep);
  expect_close(h1, h, "cell h (NCHW)");
  expect_close(c1, c, "cell c (NCHW)");
  at::Tensor gh = at::randn_like(h1), gc = at::randn_like(c1);
  auto ref_grads = torch::autograd::grad({h, c}, inputs, {gh, gc});
  auto grads = torch::autograd::grad({h1, c1}, inputs, {gh, gc});
  const char* names[] = {"grad x_gates", "grad h_gates", "grad c_prev", "grad bias",
                         "grad peephole"};
  for (size_t k = 0; k < grads.size(); ++k) expect_close(grads[k], ref_grads[k], names[k]);

  auto cl = at::MemoryFormat::ChannelsLast;
  {
    at::NoGradGuard no_grad;
    auto [h2, c2] = pyframepred::convlstm_gates(xg.contiguous(cl), hg.contiguous(cl),
                                                cp.contiguous(cl), bias, peep);
    expect_close(h2, h.detach(), "cell h (channels_last)");
    expect_close(c2, c.detach(), "cell c (channels_last)");
    auto [h3, c3] = pyframepred::convlstm_gates(xg, std::nullopt, cp, bias, peep);
    auto [h4, c4] = cell_reference(xg, at::zeros_like(hg), cp, bias, peep);
    expect_close(h3, h4, "cell h (no hidden state)");
  }

  // ConvLSTM layer over T steps against the cell applied step by step; every gradient.
  {
    const int64_t T = 3, Cin = 2;
    at::Tensor x = at::randn({T * N, Cin, H, W}, opts).requires_grad_();
    at::Tensor wx = (0.3 * at::randn({4 * C, Cin, 3, 3}, opts)).requires_grad_();
    at::Tensor wh = (0.3 * at::randn({4 * C, C, 3, 3}, opts)).requires_grad_();
    at::Tensor c0 = at::randn({N, C, H, W}, opts).requires_grad_();
    auto [h_seq, h_last, c_last] =
        pyframepred::convlstm_layer(x, T, wx, wh, bias, peep, std::nullopt, c0);
    at::Tensor hr, cr = c0;
    std::vector<at::Tensor> hs;
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor xg_t = at::conv2d(x.narrow(0, t * N, N), wx, {}, 1, 1);
      at::Tensor hg_t = t == 0 ? at::zeros_like(xg_t) : at::conv2d(hr, wh, {}, 1, 1);
      std::tie(hr, cr) = cell_reference(xg_t, hg_t, cr, bias, peep);
      hs.push_back(hr);
    }
    at::Tensor h_ref = at::cat(hs, 0);
    expect_close(h_seq, h_ref, "layer h (all steps)");
    expect_close(c_last, cr, "layer last c");
    std::vector<at::Tensor> leaves = {x, wx, wh, bias, peep, c0};
    at::Tensor w = at::randn_like(h_ref);
    auto lg = torch::autograd::grad({(h_seq * w).sum() + c_last.sum()}, leaves);
    auto lr = torch::autograd::grad({(h_ref * w).sum() + cr.sum()}, leaves);
    const char* lnames[] = {"layer grad x", "layer grad weight_x", "layer grad weight_h",
                            "layer grad bias", "layer grad peephole", "layer grad c0"};
    for (size_t k = 0; k < lg.size(); ++k) expect_close(lg[k], lr[k], lnames[k]);

    // The same layer on the sequence (T, N, C_in, H, W) as a batch-first tensor hands it over,
    // transposed (no copy): h comes back laid out as x, batch-major, and equals the frames' h.
    at::Tensor x_bf = x.detach().view({T, N, Cin, H, W}).transpose(0, 1).contiguous().requires_grad_();
    auto [h_seq5, h_last5, c_last5] =
        pyframepred::convlstm_layer(x_bf.transpose(0, 1), T, wx, wh, bias, peep, std::nullopt, c0);
    expect(h_seq5.dim() == 5 && h_seq5.transpose(0, 1).is_contiguous(), "layer h batch-major");
    expect_close(h_seq5.transpose(0, 1).reshape({N * T, C, H, W}),
                 h_ref.view({T, N, C, H, W}).transpose(0, 1).reshape({N * T, C, H, W}),
                 "layer h (sequence)");
    auto sg = torch::autograd::grad({(h_seq5 * w.view({T, N, C, H, W})).sum() + c_last5.sum()},
                                    {x_bf});
    expect_close(sg[0].transpose(0, 1).reshape({T * N, Cin, H, W}), lr[0], "layer grad x (sequence)");
  }

  // The weight gradient the layer batches over its steps (on the CPU in float32 the tiled
  // kernel of csrc/cpu/conv_cpu.cpp) against ATen's convolution backward.
  {
    const auto f = opts.dtype(at::kFloat);
    at::Tensor g = at::randn({3, 32, H, W}, f).contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor in = at::randn({3, 5, H, W}, f).contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor want = std::get<1>(at::convolution_backward(
        g, in, at::empty({32, 5, 3, 3}, f), std::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1,
        {false, true, false}));
    expect_close(pyframepred::conv2d_weight_grad(g, in, 3, 3), want, "conv2d_weight_grad", 1e-3);
  }

  // The layer's convolutions (on the CPU in float32 3x3 with 16-multiple channels: the Winograd
  // kernel of csrc/cpu/conv_cpu.cpp; odd frames leave partial tiles) against ATen's.
  {
    const auto f = opts.dtype(at::kFloat);
    at::Tensor in = at::randn({3, 16, H, W + 1}, f).contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor w = at::randn({32, 16, 3, 3}, f) / 12.0;
    expect_close(pyframepred::conv2d_same(in, w), at::conv2d(in, w, {}, 1, 1), "conv2d_same", 1e-4);
  }

  // The autocast policy holds for C++ callers too (it is registered in C++): under autocast the
  // layer runs in the low-precision dtype with a float32 cell state, exactly as the explicit
  // mixed-precision call.
  {
    const at::ScalarType low = device.is_cpu() ? at::kBFloat16 : at::kHalf;
    const int64_t T = 2, Cin = 2;
    const auto fopts = opts.dtype(at::kFloat);  // autocast leaves float64 alone
    at::Tensor x = at::randn({T * N, Cin, H, W}, fopts);
    at::Tensor wx = 0.3 * at::randn({4 * C, Cin, 3, 3}, fopts);
    at::Tensor wh = 0.3 * at::randn({4 * C, C, 3, 3}, fopts);
    at::Tensor b32 = bias.detach().to(at::kFloat);
    std::tuple<at::Tensor, at::Tensor, at::Tensor> amp;
    {
      const bool was = at::autocast::is_autocast_enabled(device.type());
      const at::ScalarType was_dtype = at::autocast::get_autocast_dtype(device.type());
      at::autocast::set_autocast_enabled(device.type(), true);
      at::autocast::set_autocast_dtype(device.type(), low);
      amp = pyframepred::convlstm_layer(x, T, wx, wh, b32);
      at::autocast::set_autocast_enabled(device.type(), was);
      at::autocast::set_autocast_dtype(device.type(), was_dtype);
      at::autocast::clear_cache();
    }
    auto [h_amp, hl_amp, c_amp] = amp;
    expect(h_amp.scalar_type() == low && c_amp.scalar_type() == at::kFloat,
           "autocast layer: h in the autocast dtype, c float32");
    auto [h_mix, hl_mix, c_mix] =
        pyframepred::convlstm_layer(x.to(low), T, wx.to(low), wh.to(low), b32);
    expect(at::equal(h_amp, h_mix) && at::equal(c_amp, c_mix),
           "autocast layer equals the explicit mixed-precision call");
  }

  // GDL: value and gradients to pred and target.
  at::Tensor pred = at::randn({3, 2, 11, 13}, opts).requires_grad_();
  at::Tensor target = at::randn({3, 2, 11, 13}, opts).requires_grad_();
  at::Tensor loss = pyframepred::gdl_loss(pred, target, 1.0, "sum");
  at::Tensor ref_loss = gdl_reference(pred, target);
  expect_close(loss, ref_loss, "gdl value (sum)");
  auto g = torch::autograd::grad({loss}, {pred, target});
  auto g_ref = torch::autograd::grad({ref_loss}, {pred, target});
  expect_close(g[0], g_ref[0], "gdl grad pred");
  expect_close(g[1], g_ref[1], "gdl grad target");
  expect_close(pyframepred::gdl_loss(pred, target), ref_loss / pred.numel(), "gdl value (mean)");

  // Bad input is a clear error, not a crash.
  auto throws = [](auto&& fn, const std::string& needle) {
    try {
      fn();
    } catch (const c10::Error& e) {
      return std::string(e.what()).find(needle) != std::string::npos;
    }
    return false;
  };
  expect(throws([&] { pyframepred::convlstm_gates(xg, hg, at::randn({N, C + 1, H, W}, opts)); },
                "c_prev must have shape"),
         "bad c_prev rejected");
  expect(throws([&] { pyframepred::gdl_loss(pred, target, 1.0, "avg"); }, "reduction"),
         "bad reduction rejected");
}

}  // namespace

int main() {
  // The CPU checks at every ISA level this CPU runs (the switch is the tests' private op).
  const std::string chosen = pyframepred::cpu_isa();
  std::printf("-- CPU kernels chosen at load: %s\n", chosen.c_str());
  const auto& set_isa = pyframepred::op::handle<pyframepred::op::SetCpuIsa>();
  bool chosen_compiled = false;
  for (const std::string& level : pyframepred::cpu_isa_levels()) {
    chosen_compiled = chosen_compiled || level == chosen;
    try {
      set_isa.call(level);
    } catch (const c10::Error& e) {
      std::printf("-- cpu %s: skipped (%s)\n", level.c_str(), e.what_without_backtrace());
      continue;
    }
    std::printf("-- cpu kernels at %s\n", level.c_str());
    check_device(at::kCPU);
  }
  expect(chosen_compiled, "load-time level is a compiled one");
  set_isa.call(chosen);
#ifdef PYFRAMEPRED_WITH_CUDA
  if (torch::cuda::is_available()) {
    check_device(at::Device(at::kCUDA, 0));
  } else {
    std::printf("-- cuda: no GPU here, CUDA checks skipped\n");
  }
#endif
  // The CPU buffer pool: its four byte counts, and a release that leaves nothing idle.
  pyframepred::empty_cpu_buffer_pool();
  const std::vector<int64_t> pool = pyframepred::cpu_buffer_pool_stats();
  expect(pool.size() == 4 && pool[0] == 0 && pool[2] == pool[1], "buffer pool emptied");

  std::printf("%s\n", failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
