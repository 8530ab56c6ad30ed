"""Build script for pyframepred's C++/CUDA extension (``pyframepred._C``).

Environment switches
--------------------
PYFRAMEPRED_CUDA=1|0     force the CUDA kernels on or off (default: on when the installed torch
                         is a CUDA build and a CUDA toolkit with nvcc is found; no GPU needed).
TORCH_CUDA_ARCH_LIST     GPU architectures to compile for (default "8.0;9.0").
CUDA_HOME                CUDA toolkit folder; found from nvcc when unset.
MAX_JOBS                 parallel compile jobs (ninja).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _toolkit_from_nvcc(nvcc):
    """Return the real toolkit folder behind ``nvcc``.

    The ``nvcc`` on PATH may be a small wrapper script living outside the toolkit, so the folder
    above it is not necessarily CUDA_HOME. nvcc's dry run prints the folder it really runs from.
    """
    try:
        # A dry run compiles nothing; it prints the variables nvcc sets, TOP among them.
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        text = ""
    match = re.search(r"^#\$ TOP=(.+)$", text, flags=re.M)
    candidates = []
    if match:
        candidates.append(match.group(1).strip())
    real = os.path.realpath(nvcc)
    candidates.append(os.path.dirname(os.path.dirname(real)))
    # A wrapper script that execs the real nvcc: read the path out of it.
    try:
        with open(real, "r", errors="ignore") as fh:
            head = fh.read(4096)
        for path in re.findall(r"(/\S+/bin/nvcc)\b", head):
            candidates.append(os.path.dirname(os.path.dirname(path)))
    except OSError:
        pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for cand in candidates:
        cand = os.path.realpath(cand)
        if os.path.exists(os.path.join(cand, "bin", "nvcc")) and (
            glob.glob(os.path.join(cand, "lib64", "libcudart*"))
            or glob.glob(os.path.join(cand, "lib", "libcudart*"))
            or glob.glob(os.path.join(cand, "targets", "*", "lib", "libcudart*"))
        ):
            return cand
    return None


def _want_cuda(torch):
    """(build the CUDA kernels?, the reason, in words)."""
    flag = os.environ.get("PYFRAMEPRED_CUDA", "").strip().lower()
    if flag in ("0", "off", "false", "no"):
        return False, f"PYFRAMEPRED_CUDA={flag}"
    forced = flag in ("1", "on", "true", "yes")
    if torch.version.cuda is None:
        if forced:
            raise RuntimeError("PYFRAMEPRED_CUDA=1 but the installed torch is a CPU-only build "
                               f"({torch.__version__}); install a CUDA build of torch first")
        return False, f"torch {torch.__version__} is a CPU-only build"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not cuda_home:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            if forced:
                raise RuntimeError("PYFRAMEPRED_CUDA=1 but nvcc was not found on PATH and CUDA_HOME "
                                   "is unset")
            return False, (f"torch {torch.__version__} is a CUDA build but nvcc is not on PATH "
                           "(and CUDA_HOME is unset)")
        cuda_home = _toolkit_from_nvcc(nvcc)
        if cuda_home is None:
            msg = f"found {nvcc} but could not locate the CUDA toolkit behind it; set CUDA_HOME"
            if forced:
                raise RuntimeError(msg)
            return False, msg
    # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
    os.environ["CUDA_HOME"] = cuda_home
    why = "PYFRAMEPRED_CUDA=1" if forced else f"torch {torch.__version__} is a CUDA build"
    return True, (f"{why}, toolkit in {cuda_home}; no GPU needed, but it takes minutes "
                  "(PYFRAMEPRED_CUDA=0 skips it)")


def _announce(msg):
    """One line that says what is built and why. pip hides a build's output unless it fails
    (or runs with -v), so the line also goes to the terminal when there is one."""
    line = f"[pyframepred setup] {msg}"
    print(line, file=sys.stderr, flush=True)
    if not sys.stderr.isatty():
        try:
            with open("/dev/tty", "w") as tty:
                tty.write(line + "\n")
        except OSError:
            pass


def _cpu_isa():
    """SIMD level the CPU kernels are compiled for: avx2 when this (x86-64) machine has it.

    The package is built from source on the machine that runs it; PYFRAMEPRED_CPU_ISA=default
    builds portable kernels instead.
    """
    isa = os.environ.get("PYFRAMEPRED_CPU_ISA", "").strip().lower()
    if isa in ("default", "avx2"):
        return isa
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return "default"
    return "avx2" if all(f" {f}" in flags for f in ("avx2", "fma", "f16c")) else "default"


def _write_build_config(torch, isa, use_cuda, cuda_reason):
    path = os.path.join(HERE, "pyframepred", "_build_config.py")
    text = ("# Written by setup.py when the extension is built; do not edit.\n"
            f"TORCH_VERSION = {torch.__version__.split('+')[0]!r}\n"
            f"CPU_ISA = {isa!r}\n"
            f"WITH_CUDA = {bool(use_cuda)!r}\n"
            f"CUDA_REASON = {cuda_reason!r}\n")
    with open(path, "w") as fh:
        fh.write(text)


def _openmp_backend(torch) -> bool:
    """True when torch's intra-op parallel backend is OpenMP and the compiler takes -fopenmp."""
    if sys.platform == "darwin" or os.environ.get("PYFRAMEPRED_OPENMP", "1") == "0":
        return False
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _extensions():
    import torch

    use_cuda, cuda_reason = _want_cuda(torch)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    base_version = torch.__version__.split("+")[0]
    define_macros = [("PYFRAMEPRED_TORCH_VERSION", f'"{base_version}"'),
                     ("Py_LIMITED_API", "0x030A0000")]
    cxx_flags = ["-O3", "-fdiagnostics-color=always"]  # the C++ standard is torch's choice
    isa = _cpu_isa()
    if isa == "avx2":
        # at::vec::Vectorized picks its AVX2 implementation from these macros (as ATen's own
        # per-capability kernel builds do); the exp/tanh it calls come from libtorch's Sleef.
        cxx_flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:
        cxx_flags += ["-DCPU_CAPABILITY=DEFAULT"]
    # at::parallel_for only spreads work over threads when the kernels are compiled with the
    # parallel backend torch itself uses; without -fopenmp it silently runs on one thread. The
    # extension then resolves libgomp.so.1 to the copy torch has already loaded.
    link_flags = []
    if _openmp_backend(torch):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    _announce(f"building CPU kernels ({isa}, "
              f"{'OpenMP threads' if link_flags else 'single-threaded'}); CUDA kernels: "
              f"{'yes' if use_cuda else 'no'} ({cuda_reason})")
    _write_build_config(torch, isa, use_cuda, cuda_reason)
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("PYFRAMEPRED_WITH_CUDA", None))
        ext = CUDAExtension(
            "pyframepred._C", sources, define_macros=define_macros, py_limited_api=True,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags)
    else:
        ext = CppExtension(
            "pyframepred._C", sources, define_macros=define_macros, py_limited_api=True,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    return [ext]


def main():
    ext_modules = _extensions()  # first: it fixes CUDA_HOME before cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    setup(ext_modules=ext_modules,
          cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
          options={"bdist_wheel": {"py_limited_api": "cp310"}})


if __name__ == "__main__":
    main()
