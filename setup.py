"""Build script for pyframepred's C++/CUDA extension (``pyframepred._C``).

Environment switches
--------------------
PYFRAMEPRED_CUDA=1|0     force the CUDA kernels on or off (default: on when the installed torch
                         is a CUDA build and a CUDA toolkit with nvcc is found; no GPU needed).
TORCH_CUDA_ARCH_LIST     GPU architectures to compile for (default: csrc/build_defaults.txt, which
                         CMakeLists.txt reads too).
CUDA_HOME                CUDA toolkit folder; found from nvcc when unset.
MAX_JOBS                 parallel compile jobs (ninja). From 8 on, the ISA levels' kernels and the
                         extension's other sources compile at the same time (each level is a
                         ninja build of its own, of three sources: one after another they kept
                         a 16-core machine mostly idle for minutes).

The CPU kernels (csrc/cpu/*_cpu.cpp) are compiled once per instruction-set level of
csrc/cpu/isa_levels.txt (on x86-64: default, avx2, avx512, avx512_bf16, amx; elsewhere: default),
the list CMake reads too; the library picks the best level the running CPU supports when it is loaded.
PYFRAMEPRED_CPU_ISA is a run-time setting (it caps that choice), not a build switch.
"""

import concurrent.futures
import copy
import glob
import os
import platform
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
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
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
            raise RuntimeError(
                "PYFRAMEPRED_CUDA=1 but the installed torch is a CPU-only build "
                f"({torch.__version__}); install a CUDA build of torch first"
            )
        return False, f"torch {torch.__version__} is a CPU-only build"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not cuda_home:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            if forced:
                raise RuntimeError("PYFRAMEPRED_CUDA=1 but nvcc was not found on PATH and CUDA_HOME is unset")
            return False, (
                f"torch {torch.__version__} is a CUDA build but nvcc is not on PATH (and CUDA_HOME is unset)"
            )
        cuda_home = _toolkit_from_nvcc(nvcc)
        if cuda_home is None:
            msg = f"found {nvcc} but could not locate the CUDA toolkit behind it; set CUDA_HOME"
            if forced:
                raise RuntimeError(msg)
            return False, msg
    # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
    os.environ["CUDA_HOME"] = cuda_home
    why = "PYFRAMEPRED_CUDA=1" if forced else f"torch {torch.__version__} is a CUDA build"
    return True, (
        f"{why}, toolkit in {cuda_home}; no GPU needed, but it takes minutes (PYFRAMEPRED_CUDA=0 skips it)"
    )


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


def _cpu_levels(compiler_is_msvc=False):
    """[(LEVEL, flags)] of csrc/cpu/isa_levels.txt that this build compiles, lowest first.

    Levels marked x86_64 need an x86-64 target and GCC/Clang-style flags.
    """
    x86 = platform.machine().lower() in ("x86_64", "amd64") and not compiler_is_msvc
    levels = []
    with open(os.path.join(HERE, "csrc", "cpu", "isa_levels.txt")) as fh:
        for line in fh:
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            level, arch, flags = words[0], words[1], words[2:]
            if arch == "any" or (arch == "x86_64" and x86):
                levels.append((level, flags))
    return levels


def _build_defaults():
    """{NAME: VALUE} of csrc/build_defaults.txt, the defaults CMakeLists.txt reads too."""
    defaults = {}
    with open(os.path.join(HERE, "csrc", "build_defaults.txt")) as fh:
        for line in fh:
            words = line.split("#", 1)[0].split(None, 1)
            if words:
                defaults[words[0]] = words[1].strip() if len(words) > 1 else ""
    return defaults


def _write_build_config(torch, levels, use_cuda, cuda_reason):
    path = os.path.join(HERE, "pyframepred", "_build_config.py")
    text = (
        "# Written by setup.py when the extension is built; do not edit.\n"
        f"TORCH_VERSION = {torch.__version__.split('+')[0]!r}\n"
        f"CPU_ISA_LEVELS = {tuple(name.lower() for name, _ in levels)!r}\n"
        f"WITH_CUDA = {bool(use_cuda)!r}\n"
        f"CUDA_REASON = {cuda_reason!r}\n"
    )
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

    # The CPU kernel sources are compiled once per ISA level by _BuildExt (below); the rest,
    # csrc/cpu/dispatch.cpp among them, once with the portable flags.
    kernel_sources = sorted(glob.glob("csrc/cpu/*_cpu.cpp"))
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(
        f for f in glob.glob("csrc/cpu/*.cpp") if f not in kernel_sources
    )
    levels = _cpu_levels(compiler_is_msvc=sys.platform == "win32")
    base_version = torch.__version__.split("+")[0]
    define_macros = [("PYFRAMEPRED_TORCH_VERSION", f'"{base_version}"'), ("Py_LIMITED_API", "0x030A0000")]
    define_macros += [(f"PYFRAMEPRED_CPU_LEVEL_{name}", None) for name, _ in levels[1:]]
    cxx_flags = ["-O3", "-fdiagnostics-color=always"]  # the C++ standard is torch's choice
    # at::parallel_for only spreads work over threads when the kernels are compiled with the
    # parallel backend torch itself uses; without -fopenmp it silently runs on one thread. The
    # extension then resolves libgomp.so.1 to the copy torch has already loaded.
    link_flags = []
    if _openmp_backend(torch):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    names = ", ".join(name.lower() for name, _ in levels)
    _announce(
        f"building CPU kernels for {names} (the best one the CPU supports is chosen when "
        f"the library loads; {'OpenMP threads' if link_flags else 'single-threaded'}); "
        f"CUDA kernels: {'yes' if use_cuda else 'no'} ({cuda_reason})"
    )
    if os.environ.get("PYFRAMEPRED_CPU_ISA"):
        _announce(
            "PYFRAMEPRED_CPU_ISA is read when the library loads, not at build time: "
            "every level above is compiled"
        )
    _write_build_config(torch, levels, use_cuda, cuda_reason)
    # Rebuild when a kernel source or header changes (the kernels are not in `sources`).
    depends = (
        kernel_sources
        + sorted(glob.glob("csrc/**/*.h", recursive=True))
        + sorted(glob.glob("csrc/cuda/*.cuh"))
        + ["csrc/cpu/isa_levels.txt", "csrc/build_defaults.txt"]
    )
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _build_defaults()["TORCH_CUDA_ARCH_LIST"])
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("PYFRAMEPRED_WITH_CUDA", None))
        ext = CUDAExtension(
            "pyframepred._C",
            sources,
            define_macros=define_macros,
            py_limited_api=True,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
            depends=depends,
        )
    else:
        ext = CppExtension(
            "pyframepred._C",
            sources,
            define_macros=define_macros,
            py_limited_api=True,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            depends=depends,
        )
    ext.pf_cpu_kernels = (kernel_sources, levels)
    return [ext]


def _parallel_builds() -> bool:
    """Whether the per-level builds run side by side: with MAX_JOBS (or, unset, the CPU count)
    of 8 or more. Below, they run one after another, as each ninja build already takes the
    jobs there are."""
    try:
        jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
    except ValueError:
        jobs = 1
    return jobs >= 8


def _build_ext_class():
    """BuildExtension that first compiles each CPU kernel source once per ISA level, each level
    with its own flags and into its own folder, and links those objects after the extension's
    other objects, lowest level first (see csrc/cpu/dispatch.cpp on why the order matters).

    It goes through the compiler object BuildExtension has set up, so the torch flags, the ninja
    build (one build.ninja per level folder, incremental) and the plain setuptools build all apply.
    """
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class _BuildExt(base):
        def build_extension(self, ext):
            kernels = getattr(ext, "pf_cpu_kernels", None)
            if kernels is not None:
                kernel_sources, levels = kernels
                if not hasattr(ext, "pf_extra_objects"):
                    ext.pf_extra_objects = list(ext.extra_objects or [])
                builds = [self._level_build(ext, kernel_sources, name, flags) for name, flags in levels]
                if _parallel_builds():
                    # The extension's own sources too, as setuptools compiles them next (same
                    # folder, arguments and ninja file): that compile then finds them up to date.
                    own = self._own_sources_build(ext)
                    with concurrent.futures.ThreadPoolExecutor(len(builds) + 1) as pool:
                        done = [pool.submit(b) for b in builds + [own]]
                        objects = [o for f in done[:-1] for o in f.result()]
                        done[-1].result()
                else:
                    objects = [o for b in builds for o in b()]
                ext.extra_objects = ext.pf_extra_objects + objects
            super().build_extension(ext)

        def _level_build(self, ext, kernel_sources, name, flags):
            """The compile of the CPU kernels at one ISA level, into their own folder."""
            extra = flags + [f"-DCPU_CAPABILITY={name}"]
            if name != "DEFAULT":
                extra.append(f"-DCPU_CAPABILITY_{name}")
            args = copy.deepcopy(ext.extra_compile_args)
            if isinstance(args, dict):
                args["cxx"] = args["cxx"] + extra
            else:
                args = args + extra
            return lambda: self.compiler.compile(
                kernel_sources,
                output_dir=os.path.join(self.build_temp, f"cpu-{name}"),
                macros=ext.define_macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=args,
                depends=ext.depends,
            )

        def _own_sources_build(self, ext):
            """The compile setuptools' build_extension runs for the extension's sources."""
            macros = list(ext.define_macros) + [(undef,) for undef in ext.undef_macros]
            return lambda: self.compiler.compile(
                ext.sources,
                output_dir=self.build_temp,
                macros=macros,
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=copy.deepcopy(ext.extra_compile_args or []),
                depends=ext.depends,
            )

    return _BuildExt


def _license() -> dict:
    """The license, in the form the running setuptools takes: an SPDX expression from 77 on (the
    TOML-table form is deprecated there, to be refused later), the plain field before (which
    refuses a string ``project.license``). pyproject.toml declares it dynamic for this."""
    import setuptools

    major = int(re.match(r"\d+", setuptools.__version__).group())
    return {"license_expression": "MIT"} if major >= 77 else {"license": "MIT"}


def main():
    ext_modules = _extensions()  # first: it fixes CUDA_HOME before cpp_extension is imported

    setup(
        **_license(),
        ext_modules=ext_modules,
        cmdclass={"build_ext": _build_ext_class()},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
