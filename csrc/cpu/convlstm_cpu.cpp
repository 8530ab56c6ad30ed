// CPU kernels of the fused ConvLSTM cell: one pass forward, one pass backward.
//
// Work is split in rows of the (N, K, P = H*W) view: rows (n, channel) walking P when the memory
// is NCHW, rows (n, p) walking the channels when it is channels_last, so that the inner loop reads
// memory in order; rows are spread over threads with at::parallel_for and each row is processed a
// SIMD vector at a time with the shared templates of convlstm.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "convlstm.h"
#include "convlstm_host.h"
#include "cpu/frames_copy.h"
#include "cpu/kernels.h"
#include "cpu/vec_utils.h"

PYFRAMEPRED_DECLARE_CPU_KERNELS(CPU_CAPABILITY)

// Compiled once per ISA level: everything here is in pyframepred::cpu::<level> (cpu/kernels.h).
namespace pyframepred {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// One strided operand as rows: a pointer to a row's first element (`at`), the step between two elements
// of a row (`inner`) and between two gate blocks (`gate`).
template <typename T>
struct Rows {
  T* data = nullptr;
  int64_t sN = 0, sC = 0, sP = 0, C = 1, P = 1;
  bool cl = false;

  Rows() = default;
  Rows(T* d, const at::Tensor& t, int64_t C_, bool cl_) : data(d), C(C_), cl(cl_) {
    const View3 v = view3_strides(t);
    sN = v.sN;
    sC = v.sC;
    sP = v.sP;
    P = t.size(2) * t.size(3);
  }
  // A per-channel vector (bias (4C,) or peephole (3, C)), contiguous: broadcast along P.
  static Rows channel_vector(T* d, int64_t C_, bool cl_) {
    Rows r;
    r.data = d;
    r.C = C_;
    r.cl = cl_;
    r.sN = 0;
    r.sC = 1;
    r.sP = 0;
    return r;
  }
  // A zero standing in for an absent operand.
  static Rows zero(T* d) {
    Rows r;
    r.data = d;
    r.C = 0;
    return r;
  }
  // Row (n, k): k is the position in channels_last iteration, the channel otherwise.
  inline T* at(int64_t n, int64_t k) const {
    if (C == 0) return data;
    return data + n * sN + k * (cl ? sP : sC);
  }
  inline int64_t inner() const { return cl ? sC : sP; }
  inline int64_t gate() const { return C * sC; }
};

// Walks rows r0, r0+1, ... as (n, k) pairs, k < K: one division at the start instead of one per
// row and operand (channels_last rows are short -- C elements -- so that cost showed).
struct RowCursor {
  int64_t n, k, K;
  RowCursor(int64_t r, int64_t K_) : n(r / K_), k(r % K_), K(K_) {}
  inline void next() {
    if (++k == K) {
      k = 0;
      ++n;
    }
  }
};

// Whether rows of `len` elements are of the dense kind (vec_utils.h): the inputs' steps along a row
// (`in`) 0 or 1, the results' (`out`) 1, and `len` a whole number of vectors of `vec` lanes.
inline bool is_dense(int64_t len, int64_t vec, std::initializer_list<int64_t> in,
                     std::initializer_list<int64_t> out) {
  if (len % vec != 0) return false;
  for (int64_t s : in) {
    if (s != 0 && s != 1) return false;
  }
  for (int64_t s : out) {
    if (s != 1) return false;
  }
  return true;
}

// Calls f(peep, dense) with both flags as std::bool_constant, for kernels templated on them.
template <typename F>
void with_flags(bool peep, bool dense, F&& f) {
  auto second = [&](auto p) {
    if (dense) {
      f(p, std::true_type{});
    } else {
      f(p, std::false_type{});
    }
  };
  if (peep) {
    second(std::true_type{});
  } else {
    second(std::false_type{});
  }
}

// scalar_t: the gates' (and h's) type; state_t: the cell state's and the parameters' (scalar_t,
// or float for float16/bfloat16 gates under mixed precision). Both load as VecAcc<scalar_t>.
template <typename scalar_t, typename state_t>
struct ForwardArgs {
  Rows<const scalar_t> xg, hg;
  Rows<const state_t> cp, bias, peep;
  Rows<scalar_t> h, gates;
  Rows<state_t> c;
  bool save;
  int64_t len;  // elements per row
};

// The cell's math for gates of type scalar_t: 16-bit gates take the cheaper tanh (vec_utils.h).
template <typename scalar_t>
using CellMath = std::conditional_t<kReduced<scalar_t>, FnGates16<VecAcc<scalar_t>>, Fn<VecAcc<scalar_t>>>;

// kDense: the rows are of the dense kind (vec_utils.h), checked by is_dense.
template <typename scalar_t, typename state_t, bool kPeep, bool kDense>
void forward_rows(const ForwardArgs<scalar_t, state_t>& a, int64_t r0, int64_t r1) {
  using V = VecAcc<scalar_t>;
  static_assert(std::is_same_v<V, VecAcc<state_t>>, "gates and state share the accumulation type");
  const V zero(0);
  RowCursor rc(r0, a.h.cl ? a.h.P : a.h.C);
  for (int64_t r = r0; r < r1; ++r, rc.next()) {
    const scalar_t* xg = a.xg.at(rc.n, rc.k);
    const scalar_t* hg = a.hg.at(rc.n, rc.k);
    const state_t* cp = a.cp.at(rc.n, rc.k);
    const state_t* b = a.bias.at(rc.n, rc.k);
    const state_t* w = a.peep.at(rc.n, rc.k);
    scalar_t* ho = a.h.at(rc.n, rc.k);
    state_t* co = a.c.at(rc.n, rc.k);
    scalar_t* go = a.save ? a.gates.at(rc.n, rc.k) : nullptr;
    const int64_t xs = a.xg.inner(), xk = a.xg.gate(), hs = a.hg.inner(), hk = a.hg.gate();
    const int64_t cs = a.cp.inner(), bs = a.bias.inner(), bk = a.bias.gate();
    const int64_t ws = a.peep.inner(), wk = a.peep.gate();
    const int64_t hos = a.h.inner(), cos = a.c.inner(), gs = a.gates.inner(), gk = a.gates.gate();
    for (int64_t j = 0; j < a.len; j += V::size()) {
      const int64_t n = kDense ? V::size() : std::min<int64_t>(V::size(), a.len - j);
      V g4[4];
      for (int k = 0; k < 4; ++k) {
        g4[k] = load_row<kDense>(xg + j * xs + k * xk, xs, n) + load_row<kDense>(hg + j * hs + k * hk, hs, n) +
                load_row<kDense>(b + j * bs + k * bk, bs, n);
      }
      const V c_prev = load_row<kDense>(cp + j * cs, cs, n);
      V wci = zero, wcf = zero, wco = zero;
      if constexpr (kPeep) {
        wci = load_row<kDense>(w + j * ws, ws, n);
        wcf = load_row<kDense>(w + j * ws + wk, ws, n);
        wco = load_row<kDense>(w + j * ws + 2 * wk, ws, n);
      }
      V i, f, g, o, c, h;
      convlstm_cell_forward<V, kPeep, CellMath<scalar_t>>(g4[0], g4[1], g4[2], g4[3], c_prev, wci,
                                                          wcf, wco, i, f, g, o, c, h);
      store_row<kDense>(ho + j * hos, hos, h, n);
      store_row<kDense>(co + j * cos, cos, c, n);
      if (go != nullptr) {
        store_row<kDense>(go + j * gs, gs, i, n);
        store_row<kDense>(go + j * gs + gk, gs, f, n);
        store_row<kDense>(go + j * gs + 2 * gk, gs, g, n);
        store_row<kDense>(go + j * gs + 3 * gk, gs, o, n);
      }
    }
  }
}

op::ConvLSTMGatesForward::Result convlstm_gates_forward_into_cpu(
    PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS, const at::Tensor& h_out) {
  auto p = plan_convlstm_forward(x_gates, h_gates, c_prev, bias, peephole, save_gates, h_out,
                                 /*strided=*/true);
  const int64_t P = p.H * p.W;
  if (p.N * p.C * P == 0) return {p.h, p.c, p.gates};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_gates.scalar_type(),
                                  "convlstm_gates_forward_cpu", [&] {
  dispatch_state_type<scalar_t>(c_prev.scalar_type(), [&](auto state_tag) {
    using state_t = typename decltype(state_tag)::type;
    static const scalar_t kZero[1] = {scalar_t(0)};
    static const state_t kZeroState[1] = {state_t(0)};
    ForwardArgs<scalar_t, state_t> a;
    a.xg = Rows<const scalar_t>(p.x_gates.const_data_ptr<scalar_t>(), p.x_gates, p.C, p.cl);
    a.hg = p.h_gates.defined()
               ? Rows<const scalar_t>(p.h_gates.const_data_ptr<scalar_t>(), p.h_gates, p.C, p.cl)
               : Rows<const scalar_t>::zero(kZero);
    a.cp = Rows<const state_t>(p.c_prev.const_data_ptr<state_t>(), p.c_prev, p.C, p.cl);
    a.bias = p.bias.defined()
                 ? Rows<const state_t>::channel_vector(p.bias.const_data_ptr<state_t>(), p.C, p.cl)
                 : Rows<const state_t>::zero(kZeroState);
    a.peep = p.peephole.defined() ? Rows<const state_t>::channel_vector(
                                        p.peephole.const_data_ptr<state_t>(), p.C, p.cl)
                                  : Rows<const state_t>::zero(kZeroState);
    a.h = Rows<scalar_t>(p.h.mutable_data_ptr<scalar_t>(), p.h, p.C, p.cl);
    a.c = Rows<state_t>(p.c.mutable_data_ptr<state_t>(), p.c, p.C, p.cl);
    a.save = save_gates;
    if (save_gates) a.gates = Rows<scalar_t>(p.gates.mutable_data_ptr<scalar_t>(), p.gates, p.C, p.cl);
    a.len = p.cl ? p.C : P;
    const int64_t rows = p.cl ? p.N * P : p.N * p.C;
    const int64_t grain = std::max<int64_t>(1, 8192 / a.len);
    const bool dense = is_dense(a.len, VecAcc<scalar_t>::size(),
                                {a.xg.inner(), a.hg.inner(), a.cp.inner(), a.bias.inner(), a.peep.inner()},
                                {a.h.inner(), a.c.inner(), save_gates ? a.gates.inner() : 1});
    with_flags(p.peephole.defined(), dense, [&](auto peep, auto dense_rows) {
      at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
        forward_rows<scalar_t, state_t, decltype(peep)::value, decltype(dense_rows)::value>(a, r0, r1);
      });
    });
  });
  });
  return {p.h, p.c, p.gates};
}

op::ConvLSTMGatesForward::Result convlstm_gates_forward_cpu(PYFRAMEPRED_CONVLSTM_GATES_FORWARD_PARAMS) {
  return convlstm_gates_forward_into_cpu(x_gates, h_gates, c_prev, bias, peephole, save_gates,
                                         at::Tensor());
}

template <typename scalar_t, typename state_t>
struct BackwardArgs {
  Rows<const scalar_t> gh, gh_add, gates;  // gh_add: read where add_gh (grad_h + grad_h_add)
  bool add_gh;
  Rows<const state_t> gc, cp, peep;
  Rows<scalar_t> dgates;
  Rows<state_t> dcp;
  bool param_grads;
  int64_t len;
};

// Processes elements [j0, j1) of row (n, k); for each vector of results calls
// sink(j, count, q[7]) with the seven per-channel quantities summed into the parameter gradients
// (lanes past count are zero).
template <typename scalar_t, typename state_t, bool kPeep, bool kDense, typename Sink>
inline void backward_row(const BackwardArgs<scalar_t, state_t>& a, int64_t rn, int64_t rk,
                         int64_t j0, int64_t j1, Sink&& sink) {
  using V = VecAcc<scalar_t>;
  static_assert(std::is_same_v<V, VecAcc<state_t>>, "gates and state share the accumulation type");
  const V zero(0);
  const scalar_t* gh = a.gh.at(rn, rk);
  const scalar_t* gha = a.gh_add.at(rn, rk);
  const state_t* gc = a.gc.at(rn, rk);
  const scalar_t* gt = a.gates.at(rn, rk);
  const state_t* cp = a.cp.at(rn, rk);
  const state_t* w = a.peep.at(rn, rk);
  scalar_t* dg_out = a.dgates.at(rn, rk);
  state_t* dcp_out = a.dcp.at(rn, rk);
  const int64_t ghs = a.gh.inner(), ghas = a.gh_add.inner(), gcs = a.gc.inner(), gts = a.gates.inner(), gtk = a.gates.gate();
  const int64_t cs = a.cp.inner(), ws = a.peep.inner(), wk = a.peep.gate();
  const int64_t ds = a.dgates.inner(), dk = a.dgates.gate(), dcs = a.dcp.inner();
  for (int64_t j = j0; j < j1; j += V::size()) {
    const int64_t n = kDense ? V::size() : std::min<int64_t>(V::size(), j1 - j);
    const V i = load_row<kDense>(gt + j * gts, gts, n);
    const V f = load_row<kDense>(gt + j * gts + gtk, gts, n);
    const V g = load_row<kDense>(gt + j * gts + 2 * gtk, gts, n);
    const V o = load_row<kDense>(gt + j * gts + 3 * gtk, gts, n);
    const V c_prev = load_row<kDense>(cp + j * cs, cs, n);
    V dh = load_row<kDense>(gh + j * ghs, ghs, n);
    if (a.add_gh) dh = dh + load_row<kDense>(gha + j * ghas, ghas, n);
    const V dc = load_row<kDense>(gc + j * gcs, gcs, n);
    V wci = zero, wcf = zero, wco = zero;
    if constexpr (kPeep) {
      wci = load_row<kDense>(w + j * ws, ws, n);
      wcf = load_row<kDense>(w + j * ws + wk, ws, n);
      wco = load_row<kDense>(w + j * ws + 2 * wk, ws, n);
    }
    V di, df, dg, do_, dc_prev, c;
    convlstm_cell_backward<V, kPeep, CellMath<scalar_t>>(i, f, g, o, c_prev, dh, dc, wci, wcf, wco,
                                                         di, df, dg, do_, dc_prev, c);
    store_row<kDense>(dg_out + j * ds, ds, di, n);
    store_row<kDense>(dg_out + j * ds + dk, ds, df, n);
    store_row<kDense>(dg_out + j * ds + 2 * dk, ds, dg, n);
    store_row<kDense>(dg_out + j * ds + 3 * dk, ds, do_, n);
    store_row<kDense>(dcp_out + j * dcs, dcs, dc_prev, n);
    if (a.param_grads) {
      V q[7] = {head(di, n), head(df, n), head(dg, n), head(do_, n), zero, zero, zero};
      if constexpr (kPeep) {
        q[4] = head(di * c_prev, n);
        q[5] = head(df * c_prev, n);
        q[6] = head(do_ * c, n);
      }
      sink(j, n, q);
    }
  }
}

// grad_h_add (may be undefined): summed into grad_h as it is read (GatesBackwardAdd,
// convlstm_host.h).
op::ConvLSTMGatesBackward::Result convlstm_gates_backward_add_cpu(
    PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS, const at::Tensor& grad_h_add) {
  auto p = plan_convlstm_backward(grad_h, grad_c, gates, c_prev, peephole, param_grads);
  const bool add_gh = grad_h_add.defined();
  at::Tensor gh_add;
  if (add_gh) {
    check_like(grad_h_add, grad_h, "convlstm_gates_backward", "grad_h_add", "grad_h");
    check_shape(grad_h_add, grad_h.sizes(), "convlstm_gates_backward", "grad_h_add", "grad_h's");
    gh_add = as_view3(grad_h_add);
  }
  const int64_t P = p.H * p.W;
  const bool peep = p.peephole.defined();
  const auto acc_dtype = at::toOpMathType(gates.scalar_type());
  at::Tensor partial;
  const int64_t len = p.cl ? p.C : P;
  // channels_last: rows (n, p) in fixed blocks, each block owning one row of partial sums
  // (fixed by the shape, not the thread count, so results are deterministic), which stays in L1
  // while the block's rows add into it.
  const int64_t block = p.cl ? std::max<int64_t>(1, 16384 / std::max<int64_t>(len, 1)) : 1;
  const int64_t rows = p.cl ? p.N * P : p.N * p.C;
  const int64_t tasks = (rows + block - 1) / block;
  if (param_grads) {
    partial = at::zeros({p.cl ? tasks : p.N, 7, p.C}, gates.options().dtype(acc_dtype));
  }
  if (rows * len > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                    "convlstm_gates_backward_cpu", [&] {
    dispatch_state_type<scalar_t>(c_prev.scalar_type(), [&](auto state_tag) {
      using state_t = typename decltype(state_tag)::type;
      using A = acc_t<scalar_t>;
      using V = VecAcc<scalar_t>;
      static const state_t kZeroState[1] = {state_t(0)};
      BackwardArgs<scalar_t, state_t> a;
      static const scalar_t kZero[1] = {scalar_t(0)};
      a.gh = Rows<const scalar_t>(p.grad_h.const_data_ptr<scalar_t>(), p.grad_h, p.C, p.cl);
      a.add_gh = add_gh;
      a.gh_add = add_gh ? Rows<const scalar_t>(gh_add.const_data_ptr<scalar_t>(), gh_add, p.C, p.cl)
                        : Rows<const scalar_t>::zero(kZero);
      a.gc = Rows<const state_t>(p.grad_c.const_data_ptr<state_t>(), p.grad_c, p.C, p.cl);
      a.gates = Rows<const scalar_t>(p.gates.const_data_ptr<scalar_t>(), p.gates, p.C, p.cl);
      a.cp = Rows<const state_t>(p.c_prev.const_data_ptr<state_t>(), p.c_prev, p.C, p.cl);
      a.peep = peep ? Rows<const state_t>::channel_vector(p.peephole.const_data_ptr<state_t>(),
                                                          p.C, p.cl)
                    : Rows<const state_t>::zero(kZeroState);
      a.dgates = Rows<scalar_t>(p.grad_gates.mutable_data_ptr<scalar_t>(), p.grad_gates, p.C, p.cl);
      a.dcp = Rows<state_t>(p.grad_c_prev.mutable_data_ptr<state_t>(), p.grad_c_prev, p.C, p.cl);
      a.param_grads = param_grads;
      a.len = len;
      A* part = param_grads ? partial.mutable_data_ptr<A>() : nullptr;
      const int64_t C = p.C;
      const int64_t grain = p.cl ? 1 : std::max<int64_t>(1, 8192 / len);
      const bool dense = is_dense(len, V::size(),
                                  {a.gh.inner(), a.gh_add.inner(), a.gc.inner(), a.gates.inner(),
                                   a.cp.inner(), a.peep.inner()},
                                  {a.dgates.inner(), a.dcp.inner()});
      with_flags(peep, dense, [&](auto peep_flag, auto dense_flag) {
      constexpr bool kPeep = decltype(peep_flag)::value, kDense = decltype(dense_flag)::value;
      at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          if (!p.cl) {
            // Row t = (n, ch): one channel, so the sums collapse to scalars at the row's end.
            V acc[7] = {V(0), V(0), V(0), V(0), V(0), V(0), V(0)};
            auto sink = [&](int64_t, int64_t, const V* q) {
              for (int k = 0; k < 7; ++k) acc[k] = acc[k] + q[k];
            };
            const int64_t n = t / C, ch = t % C;
            backward_row<scalar_t, state_t, kPeep, kDense>(a, n, ch, 0, len, sink);
            if (part != nullptr) {
              for (int k = 0; k < 7; ++k) part[(n * 7 + k) * C + ch] = hsum(acc[k]);
            }
          } else {
            const int64_t r0 = t * block, r1 = std::min(rows, (t + 1) * block);
            auto sweep = [&](auto&& sink) {
              RowCursor rc(r0, P);
              for (int64_t r = r0; r < r1; ++r, rc.next()) {
                backward_row<scalar_t, state_t, kPeep, kDense>(a, rc.n, rc.k, 0, len, sink);
              }
            };
            if (part == nullptr) {
              sweep([](int64_t, int64_t, const V*) {});
            } else {
              A* out = part + t * 7 * C;
              sweep([&](int64_t j, int64_t n, const V* q) {
                for (int k = 0; k < 7; ++k) {
                  A* dst = out + k * C + j;
                  if constexpr (kDense) {
                    (V::loadu(dst) + q[k]).store(dst);
                  } else {
                    (V::loadu(dst, n) + q[k]).store(dst, n);
                  }
                }
              });
            }
          }
        }
      });
      });
    });
    });
  }
  at::Tensor grad_params = param_grads ? finish_param_grads(partial, c_prev.scalar_type())
                                        : at::empty({0}, c_prev.options());
  return {p.grad_gates, p.grad_c_prev, grad_params};
}

}  // namespace

op::ConvLSTMGatesBackward::Result convlstm_gates_backward_cpu(PYFRAMEPRED_CONVLSTM_GATES_BACKWARD_PARAMS) {
  return convlstm_gates_backward_add_cpu(grad_h, grad_c, gates, c_prev, peephole, param_grads,
                                         at::Tensor());
}

// This level's kernels, registered by cpu/dispatch.cpp.
const ConvLSTMKernels convlstm_kernels{&convlstm_gates_forward_cpu, &convlstm_gates_backward_cpu,
                                       &convlstm_gates_forward_into_cpu,
                                       &convlstm_gates_backward_add_cpu, &copy_frames};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pyframepred
