// CTest check for LibTorch users: load libpyframepred_ops, call the fused ConvLSTM cell through
// the dispatcher on CPU, and compare it with a straightforward computation.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>
#include <optional>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const at::Tensor& a, const at::Tensor& b, const char* what) {
  const double err = (a - b).abs().max().item<double>();
  std::printf("%-28s max abs error %.3g\n", what, err);
  if (!(err < 1e-5)) ++failures;
}

}  // namespace

int main() {
  if (dlopen(PYFRAMEPRED_OPS_LIBRARY, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::printf("cannot load %s: %s\n", PYFRAMEPRED_OPS_LIBRARY, dlerror());
    return 1;
  }
  using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool);
  auto fwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("pyframepred::convlstm_gates_forward", "")
                 .typed<Fwd>();

  at::manual_seed(0);
  const int64_t N = 2, C = 5, H = 7, W = 9;
  at::Tensor xg = at::randn({N, 4 * C, H, W});
  at::Tensor hg = at::randn({N, 4 * C, H, W});
  at::Tensor cp = at::randn({N, C, H, W});
  at::Tensor bias = at::randn({4 * C});
  at::Tensor peep = at::randn({3, C});

  // Straightforward computation, gate order i, f, g, o.
  auto gates = (xg + hg + bias.view({1, -1, 1, 1})).chunk(4, 1);
  auto w = [&](int k) { return peep[k].view({1, -1, 1, 1}); };
  at::Tensor i = at::sigmoid(gates[0] + w(0) * cp);
  at::Tensor f = at::sigmoid(gates[1] + w(1) * cp);
  at::Tensor g = at::tanh(gates[2]);
  at::Tensor c = f * cp + i * g;
  at::Tensor o = at::sigmoid(gates[3] + w(2) * c);
  at::Tensor h = o * at::tanh(c);

  auto [h1, c1, saved] = fwd.call(xg, hg, cp, bias, peep, true);
  expect_close(h1, h, "h (NCHW)");
  expect_close(c1, c, "c (NCHW)");
  expect_close(saved.narrow(1, 0, C), i, "saved gate i");

  auto cl = at::MemoryFormat::ChannelsLast;
  auto [h2, c2, unused] = fwd.call(xg.contiguous(cl), hg.contiguous(cl), cp.contiguous(cl), bias,
                                   peep, false);
  expect_close(h2, h, "h (channels_last)");
  expect_close(c2, c, "c (channels_last)");

  bool threw = false;
  try {
    fwd.call(xg, hg, at::randn({N, C + 1, H, W}), bias, peep, false);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("c_prev must have shape") != std::string::npos;
  }
  std::printf("%-28s %s\n", "bad c_prev rejected", threw ? "yes" : "NO");
  if (!threw) ++failures;

  std::printf("%s\n", failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
