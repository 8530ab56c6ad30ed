#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA kernels, run the CUDA tests (also under
# compute-sanitizer), build the LibTorch library with CMake and run its C++ checks on the GPU, run
# the GPU benchmarks, and leave logs and JSON results in $OUT.
#   OUT=/tmp/out bash scripts/gpu_check.sh [benchmark files...]
# With the wheels of scripts/fetch_gpu_wheels.sh carried in .whl/ (decord and PyAV, which the GPU
# image lacks) it also trains each model briefly on CUDA (fp32, bf16, fp16 autocast), through
# torchrun/NCCL, and runs the training-throughput benchmark on CUDA.
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

echo "== CUDA kernels on the CPU execution model (the same kernel bodies, -m cuda_emu)"
if [ "${PYFRAMEPRED_GPU_EMU:-1}" = 1 ]; then
  MAX_JOBS=${MAX_JOBS:-16} $PY -m pytest tests/test_cuda_emu.py -q -p no:cacheprovider -rfE > "$OUT/cuda_emu.log" 2>&1
  echo "cuda_emu rc=$?"; tail -3 "$OUT/cuda_emu.log"
fi
echo "== ptxas resource usage / occupancy / SASS check"
$PY scripts/ptxas_report.py --arch 90 --jobs "${MAX_JOBS:-16}" --out "$OUT/ptxas_sm90" > "$OUT/ptxas.log" 2>&1
echo "ptxas_report rc=$?"; tail -3 "$OUT/ptxas.log"

echo "== CMake / LibTorch build with the CUDA kernels, CTest (CPU and GPU checks)"
if command -v cmake > /dev/null; then
  NVRTC=$($PY -c 'import glob, os, nvidia; print(next(iter(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib", "libnvrtc.so*")))), ""))' 2>/dev/null)
  { cmake -S . -B /tmp/pf-cmake -DCMAKE_BUILD_TYPE=Release -DPYFRAMEPRED_WITH_CUDA=ON \
      -DCMAKE_PREFIX_PATH="$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
      -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" ${NVRTC:+-DCUDA_nvrtc_LIBRARY="$NVRTC"} \
    && cmake --build /tmp/pf-cmake -j"${MAX_JOBS:-16}" \
    && ctest --test-dir /tmp/pf-cmake --output-on-failure -V; } > "$OUT/cmake_cuda.log" 2>&1
  echo "cmake+ctest rc=$?"; grep -E -- "-- (cpu|cuda)|checks passed|FAILED|Error" "$OUT/cmake_cuda.log" | head -8
else
  echo "cmake not installed: skipped"
fi

echo "== benchmarks"
PYFRAMEPRED_BENCH_DEVICES=cuda $PY -m pytest $BENCH --benchmark-only --bench-full -q -p no:cacheprovider \
  --benchmark-json "$OUT/bench_gpu.json" 2>&1 | tail -5 > "$OUT/bench.log"
cat "$OUT/bench.log"
$PY benchmarks/report.py "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2>&1
head -c 6000 "$OUT/bench_gpu.md"

if ls .whl/*.whl > /dev/null 2>&1; then
  echo "== training on CUDA (wheels from .whl/)"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl > "$OUT/wheels.log" 2>&1 || { tail -5 "$OUT/wheels.log"; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site
  DATA=/tmp/pyframepred-data
  $PY -m pyframepred.data.synthetic "$DATA" > "$OUT/data.log" 2>&1; tail -2 "$OUT/data.log"
  for model in seq2seq autoencoder multiscale; do
    for amp in none bf16 fp16; do
      $PY -m pyframepred.train --model $model --data "$DATA" --preset tiny --device cuda \
        --amp $amp --out "/tmp/runs/$model-$amp" --no-progress > "$OUT/train_${model}_${amp}.log" 2>&1
      echo "train $model amp=$amp rc=$?"; tail -1 "$OUT/train_${model}_${amp}.log"
    done
  done
  torchrun --standalone --nproc_per_node 1 -m pyframepred.train --model seq2seq --data "$DATA" \
    --preset tiny --device cuda --out /tmp/runs/ddp --no-progress > "$OUT/train_ddp_nccl.log" 2>&1
  echo "torchrun (NCCL) rc=$?"; tail -2 "$OUT/train_ddp_nccl.log"
  $PY -m pyframepred.evaluate /tmp/runs/seq2seq-none/last.pt --device cuda \
    --out "$OUT/eval_cuda.json" > "$OUT/eval_cuda.log" 2>&1; echo "evaluate rc=$?"
  $PY benchmarks/bench_train.py --device cuda > "$OUT/bench_train_cuda.log" 2>&1
  echo "bench_train rc=$?"; cp benchmarks/results/train_cuda.* "$OUT/" 2>/dev/null
  cat "$OUT/bench_train_cuda.log"
fi
