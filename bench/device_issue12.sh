#!/usr/bin/env bash
# Issue 12's checks on a CUDA machine, as one run of the `device` tool (about 8 minutes):
#     run(command="bash bench/device_issue12.sh", timeout_s=570)
# Builds the C kernel in place (the machine's python3 has torch, triton, cython, safetensors and
# httpx; nothing is installed), runs the CUDA tests of the quantized path (the Triton FP8/MXFP4
# decode against the C kernel for every code, the quantized diff through the GPU kernel, the GPU
# diff and stream tests), then the quantized bench on the GPU and on the CPU of that machine: one
# 20 % pair per format of 0.54 B elements per side, from the page cache. Everything lands in $OUT
# (bench/out/device here): the build, test and bench logs and the bench's JSON rows.
# DEVICES=cpu runs the same steps without a GPU (the CUDA tests then skip), to check the script.
set -uo pipefail
OUT=${OUT:-bench/out/device}
PY=${PYTHON:-python3}
DEVICES=${DEVICES:-cuda,cpu}
WORK=${WORK:-/tmp/rlsparse_issue12}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nproc; $PY -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.is_available())"
} > "$OUT/machine.txt" 2>&1
$PY setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
timeout 180 $PY -m pytest -q -p no:cacheprovider tests/test_quant_triton.py tests/test_gpu_kernel.py \
    tests/test_gpu_stream.py > "$OUT/tests.log" 2>&1
echo "tests: exit $? ($(tail -1 "$OUT/tests.log"))"
timeout 330 $PY bench/quant_bench.py --device "$DEVICES" --fractions 0.2 --tensors 32 --repeat 3 \
    --drop-pairs --out "$WORK" > "$OUT/bench.log" 2>&1
echo "bench: exit $?"
cp "$WORK"/quant_bench*.json "$OUT/" 2>/dev/null
cat "$OUT/machine.txt" "$OUT/bench.log"
echo "total $(( $(date +%s) - start )) s"
