#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA kernels, run the CUDA tests (also under
# compute-sanitizer), run the GPU benchmarks, and leave logs and JSON results in $OUT.
#   OUT=/tmp/out bash scripts/gpu_check.sh [benchmark files...]
set -uo pipefail
OUT=${OUT:-/tmp/pyframepred-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
BENCH=${*:-benchmarks}
{
  nvidia-smi
  $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1

echo "== build" 
PYFRAMEPRED_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
tail -3 "$OUT/build.log"

echo "== tests"
TESTS=$(ls tests/test_convlstm*.py tests/test_gdl*.py 2>/dev/null)
# pytest-xdist workers: a crash in one test is reported as that test's failure, the rest go on.
$PY -m pytest $TESTS -q -p no:cacheprovider -n 4 -rfE 2>&1 | tee "$OUT/tests.log" | tail -15

echo "== compute-sanitizer (memcheck) on the CUDA tests"
compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest $TESTS -q -x -p no:cacheprovider \
  -k "cuda and not large" > "$OUT/sanitizer.log" 2>&1
echo "sanitizer rc=$?" | tee -a "$OUT/sanitizer.log"; tail -5 "$OUT/sanitizer.log"

echo "== benchmarks"
PYFRAMEPRED_BENCH_DEVICES=cuda $PY -m pytest $BENCH --benchmark-only -q -p no:cacheprovider \
  --benchmark-json "$OUT/bench_gpu.json" 2>&1 | tail -5 > "$OUT/bench.log"
cat "$OUT/bench.log"
$PY benchmarks/report.py "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2>&1
head -c 6000 "$OUT/bench_gpu.md"
