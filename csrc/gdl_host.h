// Host-side part of the fused GDL shared by the CPU and CUDA implementations: argument checks with
// clear messages (built from the shared ones of checks.h), and the strided (B, H, W) walk the
// kernels make (GdlPlan).
//
// An input of shape (..., H, W) is seen as B = prod(...) images of H x W pixels. Each operand
// keeps its own strides: the batch dims are described by up to kGdlMaxBatchDims (size, stride)
// pairs after dropping size-1 dims and merging dims that are adjacent in memory, and rows are
// read through their strides (sliced, expanded views). Copied (.contiguous()) are only a tensor
// whose batch dims do not fit, and dense rows whose W stride is not 1 (transposed views,
// channels_last) -- except that channels_last inputs of the mean or the sum are read in place as
// interleaved planes of their C channels (gdl_interleaved).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "checks.h"
#include "gdl.h"
#include "include/pyframepred/op_signatures.h"

namespace pyframepred {

constexpr int kGdlMaxBatchDims = 6;

// Maps an image index b (row-major over the batch dims) to its element offset.
struct GdlBatch {
  int ndim = 0;
  int64_t size[kGdlMaxBatchDims] = {};
  int64_t stride[kGdlMaxBatchDims] = {};

  C10_HOST_DEVICE inline int64_t offset(int64_t b) const {
    int64_t off = 0;
    for (int k = ndim - 1; k >= 0; --k) {
      const int64_t i = b % size[k];
      b /= size[k];
      off += i * stride[k];
    }
    return off;
  }
};

// One strided operand: data pointer, batch map, and the strides of the H and W dims.
template <typename T>
struct GdlOperand {
  T* data = nullptr;
  GdlBatch batch;
  int64_t sH = 0, sW = 0;
};

// The batch map of `t`; false when its batch dims need more than kGdlMaxBatchDims entries.
inline bool gdl_batch_of(const at::Tensor& t, GdlBatch& out, int64_t image_dims = 2) {
  out = GdlBatch{};
  int n = 0;
  for (int64_t d = 0; d + image_dims < t.dim(); ++d) {
    const int64_t size = t.size(d), stride = t.stride(d);
    if (size == 1) continue;
    if (n > 0 && out.stride[n - 1] == size * stride) {  // merges with the previous dim
      out.size[n - 1] *= size;
      out.stride[n - 1] = stride;
      continue;
    }
    if (n == kGdlMaxBatchDims) return false;
    out.size[n] = size;
    out.stride[n] = stride;
    ++n;
  }
  out.ndim = n;
  return true;
}

inline const char* gdl_reduction_name(int64_t reduction) {
  return reduction == 0 ? "none" : (reduction == 1 ? "mean" : "sum");
}

// Checks pred/target/alpha/reduction (messages name the argument and what was expected).
inline void check_gdl_args(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS, const char* op) {
  check_float_tensor(pred, op, "pred");
  check_device(target, pred, op, "target", "pred", "pred and target must be on one device");
  check_same_dtype(target, pred, op, "target", "pred", "pred and target must have one dtype");
  TORCH_CHECK(pred.dim() >= 2, op, ": pred must have at least 2 dims (..., H, W), got shape ",
              shape_str(pred.sizes()));
  TORCH_CHECK(target.sizes() == pred.sizes(), op, ": target must have the shape of pred ",
              shape_str(pred.sizes()), ", got ", shape_str(target.sizes()));
  TORCH_CHECK(pred.numel() > 0, op, ": pred and target must not be empty, got shape ",
              shape_str(pred.sizes()));
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 1.0, op,
              ": alpha must be a finite number >= 1, got ", num_str(alpha));
  TORCH_CHECK(reduction >= 0 && reduction <= 2, op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
              std::to_string(reduction));
}

// Whether t's rows are a permuted dense layout with W stride != 1 (channels_last, a transposed
// view): the kernels would read such rows one element at a time, through a cache line or a
// sector per element, so a contiguous copy and the vector path are several times faster (CPU,
// 16x3x64x64 forward: 528 us strided against ~100 us copy + kernel; on the GPU the memory model
// counts 1 sector per element and ~10x re-reads). Expanded or overlapping rows (stride 0) stay.
inline bool gdl_rows_strided(const at::Tensor& t) {
  return t.size(-1) > 1 && t.stride(-1) != 1 && t.is_non_overlapping_and_dense();
}

inline at::Tensor gdl_readable(const at::Tensor& t) {
  GdlBatch b;
  return gdl_batch_of(t, b) && !gdl_rows_strided(t) ? t : t.contiguous();
}

// Whether t (..., C, H, W) is channels_last (strides C along W, 1 along C, W*C along H, C > 1)
// with a batch map for its (..., C) images: each such image is then H rows of W*C interleaved
// values, in which a pixel's horizontal neighbour lies C values away. Summed over its channels,
// the loss of the image is the loss of that one plane with horizontal pairs C apart, so when the
// result is one value (reduction mean or sum) the kernels read the plane in place, no copy.
inline bool gdl_interleaved(const at::Tensor& t) {
  if (t.dim() < 3) return false;
  const int64_t C = t.size(-3), W = t.size(-1);
  GdlBatch b;
  return C > 1 && t.stride(-3) == 1 && t.stride(-1) == C && t.stride(-2) == W * C &&
         gdl_batch_of(t, b, /*image_dims=*/3);
}

// True when a walk of rows of W values (stride sW, rows sH apart) has its coordinates and every
// in-image offset in int32 with room to spare (the kernels then index inside an image with
// 32-bit arithmetic).
inline bool gdl_fits32(int64_t H, int64_t W, int64_t sH, int64_t sW) {
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max() / 2;
  return H < kMax32 && W < kMax32 && (H - 1) * std::abs(sH) + (W - 1) * std::abs(sW) < kMax32;
}

inline bool gdl_fits32(const at::Tensor& t) {
  return gdl_fits32(t.size(-2), t.size(-1), t.stride(-2), t.stride(-1));
}

// Inputs after checking, and the walk the kernels make over them: B images of H rows of W values,
// horizontal pairs d values apart. Either the inputs' (..., H, W) images with d = 1, or, for
// interleaved planes (gdl_interleaved), their (..., C) images as H rows of W * C values with
// d = C (the first d values of a row have no left neighbour).
struct GdlPlan {
  int64_t B = 1, H = 1, W = 1, d = 1;
  int64_t numel = 0;        // elements of pred (the divisor of mean)
  bool interleaved = false;
  at::Tensor pred, target;  // the inputs, or contiguous copies (batch dims that do not fit,
                            // strided rows that are not read as interleaved planes)
  bool fits32 = true;       // every in-image offset and coordinate fits in int32

  // The operand the kernels walk over t (pred, target, or a gradient of their layout).
  template <typename T>
  GdlOperand<T> operand(T* data, const at::Tensor& t) const {
    GdlOperand<T> o;
    o.data = data;
    TORCH_INTERNAL_ASSERT(gdl_batch_of(t, o.batch, interleaved ? 3 : 2));
    o.sH = t.stride(-2);
    o.sW = interleaved ? 1 : t.stride(-1);
    return o;
  }

  // Whether t's walk fits 32-bit offsets (gdl_fits32).
  bool fits32_for(const at::Tensor& t) const {
    return interleaved ? gdl_fits32(H, W, t.stride(-2), 1) : gdl_fits32(t);
  }
};

// Takes the operator's arguments (gdl_loss_forward, op_signatures.h) and its name for messages.
// allow_interleaved: read channels_last inputs as interleaved planes where the reduction allows
// (mean or sum); false for kernels that cannot.
inline GdlPlan plan_gdl(PYFRAMEPRED_GDL_LOSS_FORWARD_PARAMS, const char* op,
                        bool allow_interleaved = true) {
  check_gdl_args(pred, target, alpha, reduction, op);
  GdlPlan p;
  p.H = pred.size(-2);
  p.W = pred.size(-1);
  p.numel = pred.numel();
  p.B = p.numel / (p.H * p.W);
  p.interleaved = allow_interleaved && reduction != 0 && gdl_interleaved(pred) &&
                  gdl_interleaved(target);
  if (p.interleaved) {
    const int64_t C = pred.size(-3);
    p.B /= C;
    p.W *= C;
    p.d = C;
    p.pred = pred;
    p.target = target;
  } else {
    p.pred = gdl_readable(pred);
    p.target = gdl_readable(target);
  }
  p.fits32 = p.fits32_for(p.pred) && p.fits32_for(p.target);
  return p;
}

// The forward result: one value per image (the batch shape) for "none", a 0-d tensor otherwise.
inline at::Tensor gdl_forward_output(const at::Tensor& pred, int64_t reduction) {
  if (reduction == 0) {
    return at::empty(pred.sizes().slice(0, pred.dim() - 2), pred.options());
  }
  return at::empty({}, pred.options());
}

// Checks grad_out of the backward and returns it as a contiguous accumulation-typed vector:
// one value per image for "none", a single value otherwise.
inline at::Tensor gdl_grad_scale(const at::Tensor& grad_out, const at::Tensor& pred,
                                 int64_t reduction, const char* op) {
  check_device(grad_out, pred, op, "grad_out", "pred", "");
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), op,
              ": grad_out must be a floating-point tensor, got ", grad_out.scalar_type());
  if (reduction == 0) {
    const auto batch = pred.sizes().slice(0, pred.dim() - 2);
    TORCH_CHECK(grad_out.sizes() == batch, op,
                ": grad_out must have the batch shape of pred ", shape_str(batch),
                " for reduction 'none', got ", shape_str(grad_out.sizes()));
  } else {
    TORCH_CHECK(grad_out.dim() == 0, op, ": grad_out must be 0-d for reduction '",
                gdl_reduction_name(reduction), "', got shape ",
                shape_str(grad_out.sizes()));
  }
  const auto acc = at::toOpMathType(pred.scalar_type());
  return grad_out.to(acc).reshape({-1}).contiguous();
}

// Output gradients have the layout torch.empty_like gives (as the fake kernel). The kernel writes
// them in place when the plan's walk can: a batch map, and rows that are interleaved planes
// (interleaved plans) or not strided (the others). Otherwise it writes a stand-in of such a
// layout, copied over: contiguous, or for interleaved plans (..., H, W, C) viewed as (..., C, H, W).
struct GdlGradOut {
  at::Tensor result;  // what is returned
  at::Tensor write;   // what the kernel writes (result itself, or a stand-in)
};

inline GdlGradOut gdl_grad_output(const GdlPlan& p, const at::Tensor& like) {
  GdlGradOut g;
  g.result = at::empty_like(like);
  if (p.interleaved) {
    g.write = gdl_interleaved(g.result)
        ? g.result
        : at::empty_like(like.movedim(-3, -1), at::MemoryFormat::Contiguous).movedim(-1, -3);
  } else {
    GdlBatch b;
    g.write = gdl_batch_of(g.result, b) && !gdl_rows_strided(g.result)
        ? g.result
        : at::empty(like.sizes(), like.options());
  }
  return g;
}

inline void gdl_finish_grad(GdlGradOut& g) {
  if (!g.write.is_same(g.result)) g.result.copy_(g.write);
}

}  // namespace pyframepred
