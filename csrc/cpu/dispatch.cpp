// Runtime choice of the CPU kernels' instruction-set level.
//
// The kernel sources csrc/cpu/<op>_cpu.cpp are compiled once per level of isa_levels.txt
// (DEFAULT: portable; AVX2: avx2+fma+f16c; AVX512: avx512f/bw/vl/dq+fma; AVX512_BF16: AVX512 +
// avx512_bf16; AMX: AVX512_BF16 + amx_tile, amx_bf16; x86-64 only), each copy
// in its own namespace pyframepred::cpu::<LEVEL> (cpu/kernels.h). This file is compiled once,
// with the portable flags: it registers the CPU kernels with the dispatcher and forwards each
// call through the table of the selected level.
//
// Selection, when the library is loaded: the highest compiled level that the running CPU and the
// operating system support (cpuid for the instructions; XCR0, read with xgetbv, for the OS saving
// the AVX and AVX-512 register state -- a CPU with AVX-512 under an OS that does not enable it
// cannot use it), capped by the environment variable PYFRAMEPRED_CPU_ISA (default | avx2 |
// avx512 | avx512_bf16 | amx, any case). A value that names no level, or a level this build or CPU lacks, is not
// an error: one line on stderr says so and the best supported level (at most the one asked for) is
// used. At run time pyframepred::cpu_isa() names the level in use, cpu_isa_levels() the compiled
// ones, and _set_cpu_isa(level) switches (tests and benchmarks; it raises on a level that cannot
// run here).
//
// Linking: where objects of several levels instantiate the same inline function of a header
// (c10, ATen, std, our *_host.h) the linker keeps one copy, the first it sees. Both builds link
// the portable objects first (this file and the other sources, then the kernels level by level,
// lowest first: DEFAULT, AVX2, AVX512, AVX512_BF16, AMX), so the copy kept is the one compiled for
// the lowest level that uses it; tests/test_cpu_isa.py disassembles the built library to check
// that no code outside the kernels of the wider levels uses AVX or AVX-512 instructions.
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define PYFRAMEPRED_X86_CPUID 1
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include "convlstm_host.h"
#include "cpu/kernels.h"

PYFRAMEPRED_DECLARE_CPU_KERNELS(DEFAULT)
#ifdef PYFRAMEPRED_CPU_LEVEL_AVX2
PYFRAMEPRED_DECLARE_CPU_KERNELS(AVX2)
#endif
#ifdef PYFRAMEPRED_CPU_LEVEL_AVX512
PYFRAMEPRED_DECLARE_CPU_KERNELS(AVX512)
#endif
#ifdef PYFRAMEPRED_CPU_LEVEL_AVX512_BF16
PYFRAMEPRED_DECLARE_CPU_KERNELS(AVX512_BF16)
#endif
#ifdef PYFRAMEPRED_CPU_LEVEL_AMX
PYFRAMEPRED_DECLARE_CPU_KERNELS(AMX)
#endif

namespace pyframepred {
namespace cpu {
namespace {

enum Level : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4, kNumLevels = 5 };
constexpr const char* kNames[kNumLevels] = {"default", "avx2", "avx512", "avx512_bf16", "amx"};

struct LevelTables {
  const ConvLSTMKernels* convlstm;
  const GdlKernels* gdl;
  const ConvKernels* conv;
};

// Null where a level is not compiled (non-x86 builds, MSVC).
constexpr LevelTables kTables[kNumLevels] = {
    {&DEFAULT::convlstm_kernels, &DEFAULT::gdl_kernels, &DEFAULT::conv_kernels},
#ifdef PYFRAMEPRED_CPU_LEVEL_AVX2
    {&AVX2::convlstm_kernels, &AVX2::gdl_kernels, &AVX2::conv_kernels},
#else
    {nullptr, nullptr, nullptr},
#endif
#ifdef PYFRAMEPRED_CPU_LEVEL_AVX512
    {&AVX512::convlstm_kernels, &AVX512::gdl_kernels, &AVX512::conv_kernels},
#else
    {nullptr, nullptr, nullptr},
#endif
#ifdef PYFRAMEPRED_CPU_LEVEL_AVX512_BF16
    {&AVX512_BF16::convlstm_kernels, &AVX512_BF16::gdl_kernels, &AVX512_BF16::conv_kernels},
#else
    {nullptr, nullptr, nullptr},
#endif
#ifdef PYFRAMEPRED_CPU_LEVEL_AMX
    {&AMX::convlstm_kernels, &AMX::gdl_kernels, &AMX::conv_kernels},
#else
    {nullptr, nullptr, nullptr},
#endif
};

bool compiled(int level) { return kTables[level].convlstm != nullptr; }

// The names of the levels, all of them or the compiled ones, as "default, avx2, ...".
std::string name_list(bool compiled_only) {
  std::string s;
  for (int l = 0; l < kNumLevels; ++l) {
    if (!compiled_only || compiled(l)) s += (s.empty() ? "" : ", ") + std::string(kNames[l]);
  }
  return s;
}

std::string compiled_list() { return name_list(true); }

// What the running CPU (and OS) offers.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, os_avx = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, os_avx512 = false;
  bool avx512bf16 = false, amx_tile = false, amx_bf16 = false, os_amx = false;
};

CpuFeatures detect() {
  CpuFeatures f;
#ifdef PYFRAMEPRED_X86_CPUID
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;  // the OS uses XSAVE: xgetbv may be executed
  const bool avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  if (osxsave && avx) {
    unsigned lo = 0, hi = 0;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const uint64_t xcr0 = (uint64_t(hi) << 32) | lo;
    f.os_avx = (xcr0 & 0x6) == 0x6;        // XMM and YMM state
    f.os_avx512 = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM0-15 upper halves, ZMM16-31
    f.os_amx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = (b >> 5) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = (a >> 5) & 1;
#endif
  return f;
}

// Linux (5.16 and later) lets a process use the AMX tile data only after it asks, once, with
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the permission holds for all its threads.
bool amx_permitted() {
#if defined(PYFRAMEPRED_X86_CPUID) && defined(__linux__)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
#else
  return false;
#endif
}

// Why the running CPU cannot run `level` (the first feature it lacks), or nullptr if it can.
const char* missing_feature(int level) {
  static const CpuFeatures f = detect();
  if (level >= kAvx2) {
#ifndef PYFRAMEPRED_X86_CPUID
    return "x86-64 (this is not an x86-64 CPU)";
#endif
    if (!f.avx2) return "avx2";
    if (!f.fma) return "fma";
    if (!f.f16c) return "f16c";
    if (!f.os_avx) return "OS support for the AVX register state (XCR0)";
  }
  if (level >= kAvx512) {
    if (!f.avx512f) return "avx512f";
    if (!f.avx512bw) return "avx512bw";
    if (!f.avx512vl) return "avx512vl";
    if (!f.avx512dq) return "avx512dq";
    if (!f.os_avx512) return "OS support for the AVX-512 register state (XCR0)";
  }
  if (level >= kAvx512Bf16) {
    if (!f.avx512bf16) return "avx512_bf16";
  }
  if (level >= kAmx) {
    if (!f.amx_tile) return "amx_tile";
    if (!f.amx_bf16) return "amx_bf16";
    if (!f.os_amx) return "OS support for the AMX tile state (XCR0)";
    if (!amx_permitted()) return "permission to use the AMX tile data (arch_prctl)";
  }
  return nullptr;
}

int best_level() {
  for (int l = kNumLevels - 1; l > kDefault; --l) {
    if (compiled(l) && missing_feature(l) == nullptr) return l;
  }
  return kDefault;
}

// The level named `s` (any case, surrounding blanks ignored), or -1.
int parse_level(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  std::string v;
  for (size_t i = b; i < e; ++i) v += static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
  for (int l = 0; l < kNumLevels; ++l) {
    if (v == kNames[l]) return l;
  }
  return -1;
}

int choose_at_load() {
  const int best = best_level();
  const char* env = std::getenv("PYFRAMEPRED_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const int want = parse_level(env);
  if (want < 0) {
    std::fprintf(stderr,
                 "pyframepred: warning: ignoring PYFRAMEPRED_CPU_ISA=%s (not one of %s); using the "
                 "CPU kernels for %s\n",
                 env, name_list(false).c_str(), kNames[best]);
    return best;
  }
  if (want > best) {
    const char* why = compiled(want) ? missing_feature(want) : nullptr;
    std::string reason = why != nullptr ? std::string("this CPU lacks ") + why
                                        : "this build has no " + std::string(kNames[want]) +
                                              " kernels (it has " + compiled_list() + ")";
    std::fprintf(stderr, "pyframepred: warning: PYFRAMEPRED_CPU_ISA=%s but %s; using %s\n", env,
                 reason.c_str(), kNames[best]);
    return best;
  }
  return want;
}

std::atomic<int> g_level{-1};

int init_level() {
  static const int chosen = [] {
    const int l = choose_at_load();
    g_level.store(l, std::memory_order_relaxed);
    return l;
  }();
  return chosen;
}

// Chosen when the library is loaded (so that a PYFRAMEPRED_CPU_ISA warning shows at once).
[[maybe_unused]] const int g_init = init_level();

inline const LevelTables& current() {
  int l = g_level.load(std::memory_order_relaxed);
  if (C10_UNLIKELY(l < 0)) {
    init_level();
    l = g_level.load(std::memory_order_relaxed);
  }
  return kTables[l];
}

// A registered CPU kernel: calls the selected level's kernel (member kKernel of the table that
// member kFamily of LevelTables points to).
template <typename Sig>
struct Forward;

template <typename R, typename... A>
struct Forward<R(A...)> {
  template <auto kFamily, auto kKernel>
  static R call(A... a) {
    return ((current().*kFamily)->*kKernel)(a...);
  }
};

std::string cpu_isa_op() {
  current();
  return kNames[g_level.load(std::memory_order_relaxed)];
}

std::vector<std::string> cpu_isa_levels_op() {
  std::vector<std::string> out;
  for (int l = 0; l < kNumLevels; ++l) {
    if (compiled(l)) out.emplace_back(kNames[l]);
  }
  return out;
}

// Switches to `level` and returns the previous one; raises on a level that cannot run here.
std::string set_cpu_isa_op(c10::string_view level) {
  const std::string name(level);
  const int l = parse_level(name);
  TORCH_CHECK(l >= 0, "_set_cpu_isa: '", name,
              "' is not a CPU ISA level; expected one of ", name_list(false));
  TORCH_CHECK(compiled(l), "_set_cpu_isa: this build has no ", kNames[l], " kernels (it has ",
              compiled_list(), ")");
  const char* why = missing_feature(l);
  TORCH_CHECK(why == nullptr, "_set_cpu_isa: ", kNames[l], " needs ", why,
              ", which this CPU lacks");
  const std::string previous = cpu_isa_op();
  g_level.store(l, std::memory_order_relaxed);
  return previous;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(pyframepred, CPU, m) {
  using cpu::ConvKernels;
  using cpu::ConvLSTMKernels;
  using cpu::Forward;
  using cpu::GdlKernels;
  using cpu::LevelTables;
  m.impl(op::ConvLSTMGatesForward::kName,
         &Forward<op::ConvLSTMGatesForward::Sig>::call<&LevelTables::convlstm,
                                                       &ConvLSTMKernels::gates_forward>);
  m.impl(op::ConvLSTMGatesBackward::kName,
         &Forward<op::ConvLSTMGatesBackward::Sig>::call<&LevelTables::convlstm,
                                                        &ConvLSTMKernels::gates_backward>);
  m.impl(op::Conv2dWeightGrad::kName,
         &Forward<op::Conv2dWeightGrad::Sig>::call<&LevelTables::conv, &ConvKernels::weight_grad>);
  m.impl(op::Conv2dSame::kName,
         &Forward<op::Conv2dSame::Sig>::call<&LevelTables::conv, &ConvKernels::same>);
  m.impl(op::GdlLossForward::kName,
         &Forward<op::GdlLossForward::Sig>::call<&LevelTables::gdl, &GdlKernels::loss_forward>);
  m.impl(op::GdlLossBackward::kName,
         &Forward<op::GdlLossBackward::Sig>::call<&LevelTables::gdl, &GdlKernels::loss_backward>);
  m.impl(op::CopyFrames::kName,
         &Forward<op::CopyFrames::Sig>::call<&LevelTables::convlstm, &ConvLSTMKernels::copy_frames>);
}

// The ConvLSTM layer's cell forward into its h sequence (GatesForwardInto, convlstm_host.h), at
// the level in use, like the operators above.
const bool kCpuGatesForwardInto = [] {
  gates_forward_into(c10::DeviceType::CPU) =
      &cpu::Forward<GatesForwardInto>::call<&cpu::LevelTables::convlstm,
                                            &cpu::ConvLSTMKernels::gates_forward_into>;
  return true;
}();

// The layer's weight gradients summed over its chunks (WeightGradSum, conv_weight_grad.h).
const bool kCpuWeightGradSum = [] {
  weight_grad_sum(c10::DeviceType::CPU) = {
      &cpu::Forward<WeightGradSumAdd>::call<&cpu::LevelTables::conv,
                                            &cpu::ConvKernels::weight_grad_sum_add>,
      &cpu::Forward<WeightGradSumFinish>::call<&cpu::LevelTables::conv,
                                               &cpu::ConvKernels::weight_grad_sum_finish>};
  return true;
}();

// The layer's cell backward for a sum of two gradients of h (GatesBackwardAdd, convlstm_host.h).
const bool kCpuGatesBackwardAdd = [] {
  gates_backward_add(c10::DeviceType::CPU) =
      &cpu::Forward<GatesBackwardAdd>::call<&cpu::LevelTables::convlstm,
                                            &cpu::ConvLSTMKernels::gates_backward_add>;
  return true;
}();

// The layer's copies between planar and interleaved frames (frames_copy_kernel, convlstm_host.h).
const bool kCpuFramesCopy = [] {
  frames_copy_kernel(c10::DeviceType::CPU) =
      &cpu::Forward<op::CopyFrames::Sig>::call<&cpu::LevelTables::convlstm,
                                               &cpu::ConvLSTMKernels::copy_frames>;
  return true;
}();

// The layer's prepared convolutions (PrepareConvSame, conv_weight_grad.h): prepared at the level in
// use, and run by that level's kernel.
const bool kCpuPrepareConvSame = [] {
  prepare_conv_same(c10::DeviceType::CPU) =
      &cpu::Forward<PrepareConvSame>::call<&cpu::LevelTables::conv, &cpu::ConvKernels::same_prepare>;
  return true;
}();

// The level queries take no tensor: registered for every backend.
TORCH_LIBRARY_IMPL(pyframepred, CompositeExplicitAutograd, m) {
  m.impl(op::CpuIsa::kName, &cpu::cpu_isa_op);
  m.impl(op::CpuIsaLevels::kName, &cpu::cpu_isa_levels_op);
  m.impl(op::SetCpuIsa::kName, &cpu::set_cpu_isa_op);
}

}  // namespace pyframepred
