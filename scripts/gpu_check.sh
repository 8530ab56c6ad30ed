#!/usr/bin/env bash
# The project's one call on a lent GPU machine: what only a GPU can show, inside a time budget.
#
#   OUT=/tmp/out bash scripts/gpu_check.sh
#
# A lease is short (minutes, the machine's start included) and brings back at most 8 files, so
# the stages run in the order of what a GPU run is for, each under a time cap cut to the budget
# that is left (GPU_CHECK_BUDGET seconds, default 540: a device call may run 600):
#   build      the extension with the CUDA kernels (sm_90, TORCH_CUDA_ARCH_LIST to change)
#   tests      the CUDA cases of the op, layer, module and GDL tests (pytest -k cuda)
#   layer      the layer training step round-robin on the GPU (bench_layer.py --device cuda):
#              fused vs cat(x, h) vs torch.compile of it vs the reference, float32 and bf16
#   ops        the op benchmarks (convlstm, gdl) at the recorded sizes, with copy bandwidth
#   sanitizer  compute-sanitizer memcheck over the op tests' CUDA cases
#   cmake      the LibTorch build with the CUDA kernels and its CTest check on the GPU
#   train      the models trained briefly on CUDA (fp32/bf16/fp16, torchrun/NCCL), when the
#              decord/PyAV wheels of scripts/fetch_gpu_wheels.sh are carried in .whl/
# GPU_CHECK_STAGES picks and orders stages (default: all of them, as above). What only a CPU needs
# (the CUDA kernels on the CPU execution model, ptxas and SASS checks) runs in CI instead.
#
# $OUT receives: summary.txt (each stage's exit status, seconds and cap, and the tail of its
# log), logs.tar.gz (every log), and the records under the names benchmarks/results/ uses
# (layer_gpu_<gpu>.json, convlstm_gpu_<gpu>.json, gdl_gpu_<gpu>.json, train_cuda.json): copy
# those into benchmarks/results/ and run `python benchmarks/record.py --regen-only`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pyframepred-gpu}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
JOBS=${MAX_JOBS:-$(nproc)}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-540}
RESERVE=15 # seconds kept for packing the logs
STAGES=${GPU_CHECK_STAGES:-build tests layer ops sanitizer cmake train}
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - RESERVE - ($(date +%s) - START))); }

# stage NAME CAP COMMAND: runs COMMAND (a bash string) with its output in $LOGS/NAME.log, under
# min(CAP, the budget left); interrupted (SIGINT, so pytest and the recorders keep what they
# have) when the time is up.
stage() {
  local name=$1 cap=$2 cmd=$3 t0 rc limit
  limit=$(left)
  ((cap < limit)) && limit=$cap
  if ((limit < 20)); then
    say "== $name: skipped, $(left) s of the budget left"
    return 99
  fi
  t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" bash -c "$cmd" > "$LOGS/$name.log" 2>&1
  rc=$?
  say "== $name: rc=$rc in $(($(date +%s) - t0)) s (cap $limit s)$([ $rc = 124 ] && echo ', cut at its cap')"
  tail -n "${TAIL:-6}" "$LOGS/$name.log" | cut -c1-300 | tee -a "$SUMMARY"
  return $rc
}

{
  nvidia-smi
  $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())"
  nproc
  grep -m1 'model name' /proc/cpuinfo
} > "$LOGS/env.log" 2>&1
say "$(date -u +%FT%TZ) budget ${BUDGET} s, stages: $STAGES"
say "$(tail -n 3 "$LOGS/env.log" | tr '\n' ' ')"
SLUG=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import record; print(record.gpu_slug())" \
  2> /dev/null || echo gpu)
TESTS="tests/test_convlstm_op.py tests/test_convlstm_layer.py tests/test_convlstm_nn.py \
tests/test_convlstm_mixed_precision.py tests/test_convlstm_layer_compile.py tests/test_gdl.py"
BUILT=0

for s in $STAGES; do
  case $s in
    build)
      stage build 300 "PYFRAMEPRED_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
        MAX_JOBS=$JOBS $PY setup.py build_ext --inplace \
        && $PY -c 'import pyframepred, torch; assert pyframepred._C.with_cuda == 1; print(\"with_cuda\", torch.cuda.is_available())'" \
        && BUILT=1
      ((BUILT)) || { say "the build failed: nothing else can run"; break; }
      ;;
    tests)
      # xdist workers: a crash in one test is reported as that test's failure, the rest go on.
      TAIL=12 stage tests 150 "$PY -m pytest $TESTS -q -p no:cacheprovider -n 8 -rfE -k cuda"
      ;;
    layer)
      stage layer 240 "$PY benchmarks/bench_layer.py --device cuda --rounds 7 \
        --sizes '4x64x[64]@64' '8x16x[32]@32' '8x16x[32,32]@32' --out $OUT/layer_gpu_$SLUG.json"
      ;;
    ops)
      stage ops 120 "PYFRAMEPRED_BENCH_DEVICES=cuda $PY -m pytest benchmarks/bench_convlstm.py \
        --benchmark-only --bench-full -q -p no:cacheprovider --benchmark-json $OUT/convlstm_gpu_$SLUG.json; \
        PYFRAMEPRED_BENCH_DEVICES=cuda $PY -m pytest benchmarks/bench_gdl.py --benchmark-only \
        --bench-full -q -p no:cacheprovider --benchmark-json $OUT/gdl_gpu_$SLUG.json"
      for f in "$OUT"/convlstm_gpu_*.json "$OUT"/gdl_gpu_*.json; do
        [ -s "$f" ] && $PY benchmarks/report.py "$f" > "$LOGS/$(basename "$f" .json).md" 2>&1
      done
      ;;
    sanitizer)
      stage sanitizer 120 "compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest \
        tests/test_convlstm_op.py tests/test_gdl.py -q -x -p no:cacheprovider -k 'cuda and not large'"
      ;;
    cmake)
      stage cmake 200 "NVRTC=\$($PY -c 'import glob, os, nvidia; print(next(iter(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], \"*\", \"lib\", \"libnvrtc.so*\")))), \"\"))' 2> /dev/null)
        cmake -S . -B /tmp/pf-cmake -DCMAKE_BUILD_TYPE=Release -DPYFRAMEPRED_WITH_CUDA=ON \
          -DCMAKE_PREFIX_PATH=\$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)') \
          -DTORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \${NVRTC:+-DCUDA_nvrtc_LIBRARY=\$NVRTC} \
        && cmake --build /tmp/pf-cmake -j$JOBS && ctest --test-dir /tmp/pf-cmake --output-on-failure -V"
      ;;
    train)
      if ! ls .whl/*.whl > /dev/null 2>&1; then
        say "== train: skipped, no decord/PyAV wheels in .whl/ (scripts/fetch_gpu_wheels.sh)"
        continue
      fi
      stage train 240 "set -e
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=$PWD:/tmp/site DATA=/tmp/pyframepred-data
        $PY -m pyframepred.data.synthetic \$DATA
        for model in seq2seq autoencoder multiscale; do for amp in none bf16 fp16; do
          $PY -m pyframepred.train --model \$model --data \$DATA --preset tiny --device cuda \
            --amp \$amp --out /tmp/runs/\$model-\$amp --no-progress > /tmp/train_\${model}_\$amp.log 2>&1
          echo \"train \$model amp=\$amp: \$(tail -n 1 /tmp/train_\${model}_\$amp.log)\"
        done; done
        torchrun --standalone --nproc_per_node 1 -m pyframepred.train --model seq2seq --data \$DATA \
          --preset tiny --device cuda --out /tmp/runs/ddp --no-progress 2>&1 | tail -n 2
        $PY -m pyframepred.evaluate /tmp/runs/seq2seq-none/last.pt --device cuda --out /tmp/eval_cuda.json
        $PY benchmarks/bench_train.py --device cuda && cp benchmarks/results/train_cuda.json $OUT/"
      cp /tmp/train_*.log "$LOGS/" 2> /dev/null
      ;;
    *) say "== $s: no such stage" ;;
  esac
done

tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
say "$(date -u +%FT%TZ) done in $(($(date +%s) - START)) s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
