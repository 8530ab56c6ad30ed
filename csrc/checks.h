// Argument checks shared by every operator's host code (convlstm_host.h, gdl_host.h, the layer):
// each names the operator and the argument and says what was expected and what it got.
#pragma once

#include <ATen/ATen.h>

#include <cstdio>
#include <string>

namespace pyframepred {

// Messages format numbers and devices as strings before TORCH_CHECK sees them: with GCC 13 and
// torch 2.11 (seen on a GPU machine) streaming an integer or a double through c10::str crashed
// inside the extension's copy of std::ostream::_M_insert.
inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "(";
  for (size_t k = 0; k < s.size(); ++k) {
    out += std::to_string(s[k]);
    if (k + 1 < s.size()) out += ", ";
  }
  return out + ")";
}

inline std::string num_str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

inline void check_float_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
}

// `t` (named `name`) is on the device of `ref`; `rule`, when not empty, ends the message.
inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                         const char* name, const char* ref_name,
                         const char* rule = "all inputs must be on one device") {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device().str(), " but ",
              ref_name, " is on ", ref.device().str(), *rule ? "; " : "", rule);
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op,
                             const char* name, const char* ref_name,
                             const char* rule = "they must have one dtype") {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(), "; ", rule);
}

// A floating-point tensor on the device and with the dtype of `ref`.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  check_float_tensor(t, op, name);
  check_device(t, ref, op, name, ref_name);
  check_same_dtype(t, ref, op, name, ref_name);
}

// `what` describes the expected shape in symbols, e.g. "(N, C, H, W)".
inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op,
                        const char* name, const char* what) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", what, " = ",
              shape_str(expected), ", got ", shape_str(t.sizes()));
}

}  // namespace pyframepred
