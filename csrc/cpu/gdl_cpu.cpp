// CPU kernels of the fused gradient difference loss: one pass forward, one pass backward.
//
// Work is split in tasks of (image, band of rows); the band height depends on the image width
// only (about kBandElems pixels a band), never on the thread count, so the per-task partial sums
// and their fixed-order final sum are bit-identical run after run. Inside a band each row is
// processed a SIMD vector at a time along W with the shared templates of gdl.h; rows are read
// through their strides (load/store of vec_utils.h convert half/bfloat16 to float).
//
// Forward: row y contributes its horizontal pairs (x-1, x) and the vertical pairs (y-1, x)->(y, x).
// Backward (gather form, no atomics): for row y the coefficients of the vertical pairs above
// (carried from the previous row) and below, and of the horizontal pairs of the row, are kept in
// small row buffers; each pixel's gradient is gathered from them and written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/vec_utils.h"
#include "gdl.h"
#include "gdl_host.h"

PYFRAMEPRED_DECLARE_CPU_KERNELS(CPU_CAPABILITY)

// Compiled once per ISA level: everything below is in pyframepred::cpu::<level> (cpu/kernels.h)
// but for the GdlFn specialisation, whose at::vec::Vectorized type is itself per level.
namespace pyframepred {

template <typename A>
struct GdlFn<at::vec::Vectorized<A>> {
  using V = at::vec::Vectorized<A>;
  // 1 where x > 0, -1 where x < 0, x itself (+-0 or NaN) elsewhere: as the scalar version.
  static inline V sign(const V& x) {
    const V zero(0);
    const V r = V::blendv(x, V(1), x > zero);
    return V::blendv(r, V(-1), x < zero);
  }
  // x^a for x >= 0 as exp(a * log(x)) (0 at x = 0, NaN stays NaN): several times faster than
  // Sleef's pow, within a few ulps for the magnitudes a loss sees.
  static inline V pow(const V& x, const V& a) { return (a * x.log()).exp(); }
};

namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kBandElems = 16384;
// The forward sums a band's terms in vectors over rows of about kFlushElems pixels, then adds
// them to the band's double sum: one horizontal sum per kFlushElems pixels, not per row (a
// 64-pixel row at AVX-512 is 4 vectors, for which a horizontal sum per row was a third more
// work), and at most kFlushElems / vector width terms per lane in the accumulation type.
constexpr int64_t kFlushElems = 1024;

// kFast: a full vector at unit stride (load_vec/store_vec of cpu/vec_utils.h, the fast path of
// rows whose W stride is 1); otherwise `n` (1..size) values at stride s.
template <bool kFast, typename scalar_t>
inline VecAcc<scalar_t> ld(const scalar_t* p, int64_t s, int64_t n) {
  if constexpr (kFast) {
    return load_vec(p);
  } else {
    return load(p, s, n);
  }
}

template <bool kFast, typename scalar_t>
inline void st(scalar_t* p, int64_t s, const VecAcc<scalar_t>& v, int64_t n) {
  if constexpr (kFast) {
    store_vec(p, v);
  } else {
    store(p, s, v, n);
  }
}

inline int64_t band_rows(int64_t H, int64_t W) {
  return std::min(H, std::max<int64_t>(1, (kBandElems + W - 1) / W));
}

// Sum of the loss terms of rows [y0, y1) of image b (the vertical pairs of row y0 reach into
// row y0 - 1). kUnit: both operands have W stride 1 (full vectors are plain loads). d: the
// distance of horizontal pairs along a row (1; C in an interleaved channels_last plane, whose
// first d columns then have no left neighbour).
template <typename scalar_t, GdlPower kP, bool kUnit>
double forward_band(const GdlOperand<const scalar_t>& p, const GdlOperand<const scalar_t>& t,
                    int64_t b, int64_t y0, int64_t y1, int64_t W, acc_t<scalar_t> alpha,
                    int64_t d) {
  using A = acc_t<scalar_t>;
  using V = VecAcc<scalar_t>;
  constexpr int64_t kV = V::size();
  const scalar_t* P = p.data + p.batch.offset(b);
  const scalar_t* T = t.data + t.batch.offset(b);
  const int64_t psH = p.sH, psW = p.sW, tsH = t.sH, tsW = t.sW;
  const V va(alpha);
  const V lane = V::arange(A(0), A(1));
  const int64_t flush_rows = std::max<int64_t>(1, kFlushElems / W);
  double total = 0;
  V acc(0);
  A first = 0;  // columns 0 .. d-1 have only their vertical pairs
  for (int64_t y = y0; y < y1; ++y) {
    const scalar_t* pr = P + y * psH;
    const scalar_t* tr = T + y * tsH;
    // Terms of the pixels x .. x+n-1 of row y: horizontal pairs (x-1, x), and when kUp the
    // vertical pairs with row y - 1.
    // `skip`: leading lanes already counted (the overlapping last vector of a row).
    auto body = [&](auto fast, auto with_up, int64_t x, int64_t n, int64_t skip) {
      constexpr bool kFast = decltype(fast)::value;
      const V pc = ld<kFast>(pr + x * psW, psW, n);
      const V tc = ld<kFast>(tr + x * tsW, tsW, n);
      const V pl = ld<kFast>(pr + (x - d) * psW, psW, n);
      const V tl = ld<kFast>(tr + (x - d) * tsW, tsW, n);
      V term = gdl_term<kP>(tc - tl, pc - pl, va);
      if constexpr (decltype(with_up)::value) {
        const V pu = ld<kFast>(pr - psH + x * psW, psW, n);
        const V tu = ld<kFast>(tr - tsH + x * tsW, tsW, n);
        term = term + gdl_term<kP>(tc - tu, pc - pu, va);
      }
      if (skip > 0) term = V::blendv(V(0), term, lane >= V(static_cast<A>(skip)));
      acc = acc + head(term, n);
    };
    auto row = [&](auto with_up) {
      int64_t x = d;
      if constexpr (kUnit) {
        if (W - d >= kV) {
          for (; x + kV <= W; x += kV) body(std::true_type{}, with_up, x, kV, 0);
          // The rest as one full vector ending at W, its lanes before x masked out.
          if (x < W) body(std::true_type{}, with_up, W - kV, kV, x - (W - kV));
          x = W;
        }
      }
      for (; x < W; x += kV) {
        body(std::false_type{}, with_up, x, std::min<int64_t>(kV, W - x), 0);
      }
    };
    if (y > 0) {
      for (int64_t x = 0; x < d && x < W; ++x) {
        const scalar_t* pc = pr + x * psW;
        const scalar_t* tc = tr + x * tsW;
        first += gdl_term<kP, A>(A(tc[0]) - A(tc[-tsH]), A(pc[0]) - A(pc[-psH]), alpha);
      }
      row(std::true_type{});
    } else {
      row(std::false_type{});
    }
    if ((y - y0 + 1) % flush_rows == 0 || y + 1 == y1) {
      total += static_cast<double>(first) + static_cast<double>(hsum(acc));
      acc = V(0);
      first = 0;
    }
  }
  return total;
}

op::GdlLossForward::Result gdl_loss_forward_cpu(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS) {
  // Messages name the public function (pyframepred.ops.gdl_loss, pyframepred::gdl_loss).
  const GdlPlan p = plan_gdl(pred, target, alpha, reduction, "gdl_loss");
  at::Tensor out = gdl_forward_output(pred, reduction);
  const int64_t rows = band_rows(p.H, p.W);
  const int64_t bands = (p.H + rows - 1) / rows;
  const int64_t tasks = p.B * bands;
  std::vector<double> partial(tasks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(),
                                  "gdl_loss_forward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const auto po = p.operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
    const auto to = p.operand(p.target.const_data_ptr<scalar_t>(), p.target);
    const A a = static_cast<A>(alpha);
    const int64_t grain = std::max<int64_t>(1, 32768 / (rows * p.W));
    gdl_dispatch_power(alpha, [&](auto tag) {
      constexpr GdlPower kP = decltype(tag)::value;
      const bool unit = po.sW == 1 && to.sW == 1;
      at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
        for (int64_t k = t0; k < t1; ++k) {
          const int64_t b = k / bands, y0 = (k % bands) * rows, y1 = std::min(p.H, y0 + rows);
          partial[k] = unit ? forward_band<scalar_t, kP, true>(po, to, b, y0, y1, p.W, a, p.d)
                            : forward_band<scalar_t, kP, false>(po, to, b, y0, y1, p.W, a, p.d);
        }
      });
    });
    // Fixed-order final sums.
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (reduction == 0) {  // never interleaved: p.B images of the batch shape
      for (int64_t b = 0; b < p.B; ++b) {
        double s = 0;
        for (int64_t j = 0; j < bands; ++j) s += partial[b * bands + j];
        o[b] = static_cast<scalar_t>(s);
      }
    } else {
      double s = 0;
      for (int64_t k = 0; k < tasks; ++k) s += partial[k];
      if (reduction == 1) s /= static_cast<double>(p.numel);
      o[0] = static_cast<scalar_t>(s);
    }
  });
  return out;
}

template <typename scalar_t>
struct BackwardArgs {
  GdlOperand<const scalar_t> p, t;
  GdlOperand<scalar_t> gp, gt;
  const acc_t<scalar_t>* scale;  // incoming gradient: per image (none) or one value
  bool per_image;
  int64_t H, W, numel;
  int64_t d = 1;  // horizontal pair distance along a row (C in an interleaved plane)
  bool mean;
  acc_t<scalar_t> alpha;
};

// Gradients of rows [y0, y1) of image b. `buf` holds 6 * (W + d) accumulation values. kUnit:
// every operand has W stride 1.
template <typename scalar_t, GdlPower kP, bool kTarget, bool kUnit>
void backward_band(const BackwardArgs<scalar_t>& a, int64_t b, int64_t y0, int64_t y1,
                   acc_t<scalar_t>* buf) {
  using A = acc_t<scalar_t>;
  using V = VecAcc<scalar_t>;
  constexpr int64_t kV = V::size();
  const int64_t H = a.H, W = a.W, d = a.d;
  const scalar_t* P = a.p.data + a.p.batch.offset(b);
  const scalar_t* T = a.t.data + a.t.batch.offset(b);
  scalar_t* GP = a.gp.data + a.gp.batch.offset(b);
  scalar_t* GT = kTarget ? a.gt.data + a.gt.batch.offset(b) : nullptr;
  const int64_t psH = a.p.sH, psW = a.p.sW, tsH = a.t.sH, tsW = a.t.sW;
  const int64_t gpH = a.gp.sH, gpW = a.gp.sW, gtH = a.gt.sH, gtW = a.gt.sW;
  A s = a.scale[a.per_image ? b : 0];
  if (a.mean) s = s / static_cast<A>(a.numel);
  const V vs(s), va(a.alpha);

  // Row buffers (pred, then target): coefficients of the vertical pairs above the row (`up`,
  // carried from the previous row) and below it (`down`), and of the row's horizontal pairs
  // (h[x] = pair (x-d, x); h[0 .. d-1] = h[W .. W+d-1] = 0).
  const int64_t L = W + d;
  A* up_p = buf;
  A* down_p = buf + L;
  A* h_p = buf + 2 * L;
  A* up_t = buf + 3 * L;
  A* down_t = buf + 4 * L;
  A* h_t = buf + 5 * L;

  // Runs body(fast, x, n) over x = x0 .. W-1 a vector at a time.
  // Every body writes the same values when called twice for a column, so the rest of a row
  // is done as one full vector ending at W that overlaps the previous one.
  auto sweep = [&](int64_t x0, auto&& body) {
    int64_t x = x0;
    if constexpr (kUnit) {
      if (W - x0 >= kV) {
        for (; x + kV <= W; x += kV) body(std::true_type{}, x, kV);
        if (x < W) body(std::true_type{}, W - kV, kV);
        x = W;
      }
    }
    for (; x < W; x += kV) body(std::false_type{}, x, std::min<int64_t>(kV, W - x));
  };

  // Coefficients of the vertical pairs (y-1, x) -> (y, x) at x .. x+n-1.
  auto vertical = [&](auto fast, int64_t y, int64_t x, int64_t n, V& cp, V& ct) {
    constexpr bool kFast = decltype(fast)::value;
    const scalar_t* pr = P + y * psH + x * psW;
    const scalar_t* tr = T + y * tsH + x * tsW;
    const V pc = ld<kFast>(pr, psW, n);
    const V tc = ld<kFast>(tr, tsW, n);
    const V pu = ld<kFast>(pr - psH, psW, n);
    const V tu = ld<kFast>(tr - tsH, tsW, n);
    gdl_coef<kP, kTarget>(tc - tu, pc - pu, va, cp, ct);
  };

  if (y0 > 0) {
    sweep(0, [&](auto fast, int64_t x, int64_t n) {
      V cp, ct;
      vertical(fast, y0, x, n, cp, ct);
      cp.store(up_p + x, n);
      if constexpr (kTarget) ct.store(up_t + x, n);
    });
  } else {
    std::fill(up_p, up_p + W, A(0));
    if constexpr (kTarget) std::fill(up_t, up_t + W, A(0));
  }
  for (int64_t j = 0; j < d; ++j) h_p[j] = h_p[W + j] = h_t[j] = h_t[W + j] = A(0);

  for (int64_t y = y0; y < y1; ++y) {
    const scalar_t* pr = P + y * psH;
    const scalar_t* tr = T + y * tsH;
    sweep(d, [&](auto fast, int64_t x, int64_t n) {
      constexpr bool kFast = decltype(fast)::value;
      const V pc = ld<kFast>(pr + x * psW, psW, n);
      const V tc = ld<kFast>(tr + x * tsW, tsW, n);
      const V pl = ld<kFast>(pr + (x - d) * psW, psW, n);
      const V tl = ld<kFast>(tr + (x - d) * tsW, tsW, n);
      V cp, ct;
      gdl_coef<kP, kTarget>(tc - tl, pc - pl, va, cp, ct);
      cp.store(h_p + x, n);
      if constexpr (kTarget) ct.store(h_t + x, n);
    });
    scalar_t* gpr = GP + y * gpH;
    scalar_t* gtr = kTarget ? GT + y * gtH : nullptr;
    const bool has_down = y + 1 < H;
    // The pairs below the row (stored for the next row) and each pixel's gathered gradient.
    sweep(0, [&](auto fast, int64_t x, int64_t n) {
      constexpr bool kFast = decltype(fast)::value;
      V dn_p(0), dn_t(0);
      if (has_down) {
        vertical(fast, y + 1, x, n, dn_p, dn_t);
        dn_p.store(down_p + x, n);
        if constexpr (kTarget) dn_t.store(down_t + x, n);
      }
      const V g = gdl_gather(V::loadu(up_p + x, n), dn_p, V::loadu(h_p + x, n),
                             V::loadu(h_p + x + d, n), vs);
      st<kFast>(gpr + x * gpW, gpW, g, n);
      if constexpr (kTarget) {
        const V gt = gdl_gather(V::loadu(up_t + x, n), dn_t, V::loadu(h_t + x, n),
                                V::loadu(h_t + x + d, n), vs);
        st<kFast>(gtr + x * gtW, gtW, gt, n);
      }
    });
    std::swap(up_p, down_p);
    if constexpr (kTarget) std::swap(up_t, down_t);
  }
}

op::GdlLossBackward::Result gdl_loss_backward_cpu(PYFRAMEPRED_GDL_LOSS_BACKWARD_PARAMS) {
  constexpr const char* name = op::GdlLossBackward::kName;
  const GdlPlan p = plan_gdl(pred, target, alpha, reduction, name);
  const at::Tensor scale = gdl_grad_scale(grad_out, pred, reduction, name);
  GdlGradOut gp = gdl_grad_output(p, pred);  // empty_like: channels_last, like pred
  GdlGradOut gt;
  if (target_grad) gt = gdl_grad_output(p, target);
  const int64_t rows = band_rows(p.H, p.W);
  const int64_t bands = (p.H + rows - 1) / rows;
  const int64_t tasks = p.B * bands;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(),
                                  "gdl_loss_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    BackwardArgs<scalar_t> a;
    a.p = p.operand(p.pred.const_data_ptr<scalar_t>(), p.pred);
    a.t = p.operand(p.target.const_data_ptr<scalar_t>(), p.target);
    a.gp = p.operand(gp.write.mutable_data_ptr<scalar_t>(), gp.write);
    if (target_grad) a.gt = p.operand(gt.write.mutable_data_ptr<scalar_t>(), gt.write);
    a.scale = scale.const_data_ptr<A>();
    a.per_image = reduction == 0;
    a.H = p.H;
    a.W = p.W;
    a.d = p.d;
    a.numel = p.numel;
    a.mean = reduction == 1;
    a.alpha = static_cast<A>(alpha);
    const int64_t grain = std::max<int64_t>(1, 32768 / (rows * p.W));
    gdl_dispatch_power(alpha, [&](auto tag) {
      constexpr GdlPower kP = decltype(tag)::value;
      const bool unit =
          a.p.sW == 1 && a.t.sW == 1 && a.gp.sW == 1 && (!target_grad || a.gt.sW == 1);
      at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
        std::vector<A> buf(6 * (p.W + p.d));
        for (int64_t k = t0; k < t1; ++k) {
          const int64_t b = k / bands, y0 = (k % bands) * rows, y1 = std::min(p.H, y0 + rows);
          if (target_grad) {
            unit ? backward_band<scalar_t, kP, true, true>(a, b, y0, y1, buf.data())
                 : backward_band<scalar_t, kP, true, false>(a, b, y0, y1, buf.data());
          } else {
            unit ? backward_band<scalar_t, kP, false, true>(a, b, y0, y1, buf.data())
                 : backward_band<scalar_t, kP, false, false>(a, b, y0, y1, buf.data());
          }
        }
      });
    });
  });
  gdl_finish_grad(gp);
  if (!target_grad) return {gp.result, at::empty({0}, pred.options())};
  gdl_finish_grad(gt);
  return {gp.result, gt.result};
}

}  // namespace

// This level's kernels, registered by cpu/dispatch.cpp.
const GdlKernels gdl_kernels{&gdl_loss_forward_cpu, &gdl_loss_backward_cpu};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pyframepred
