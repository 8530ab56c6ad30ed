// The Python module `pyframepred._C`. It binds no functions (the operators are reached through
// torch.ops.pyframepred); importing it loads the shared library, which registers the operators.
// It records the torch version it was compiled against so that a mismatch is reported clearly.
#include <Python.h>

#ifndef PYFRAMEPRED_TORCH_VERSION
#define PYFRAMEPRED_TORCH_VERSION "unknown"
#endif

static struct PyModuleDef pyframepred_module = {
    PyModuleDef_HEAD_INIT, "_C", "pyframepred compiled operators (see torch.ops.pyframepred)", -1,
    nullptr};

extern "C" PyObject* PyInit__C(void) {
  PyObject* m = PyModule_Create(&pyframepred_module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "built_with_torch", PYFRAMEPRED_TORCH_VERSION);
#ifdef PYFRAMEPRED_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  // The CPU kernels' at::parallel_for only uses threads when compiled with OpenMP.
#ifdef _OPENMP
  PyModule_AddIntConstant(m, "with_openmp", 1);
#else
  PyModule_AddIntConstant(m, "with_openmp", 0);
#endif
  return m;
}
