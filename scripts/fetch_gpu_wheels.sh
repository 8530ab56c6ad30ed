#!/usr/bin/env bash
# Downloads the wheels the GPU machines lack (decord, PyAV) for their Python 3.12 into .whl/
# (git-ignored). Carry `.whl` to the GPU machine: scripts/gpu_check.sh installs them from there
# and, in its `train` stage, trains each model briefly on CUDA (also through torchrun/NCCL),
# evaluates one checkpoint there and runs the training benchmark on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
for req in decord==0.6.0 av==18.1.0; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$req"
done
ls -la .whl
