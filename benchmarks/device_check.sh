#!/usr/bin/env bash
# The GPU checks as one prepared run on a lent GPU machine (the `device` tool; CI never has one):
#   here:    make device-wheels    # sqlite-utils and the two packages it needs that the GPU image lacks
#   device:  run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
# That image has Python 3.12 with torch 2.11 and pytest, and no network: only the carried wheels are
# installed (into /tmp/site). What to bring back is written under $OUT: the GPU's name, the CUDA tests' log,
# the GPU tracker-overhead tables, and docs/benchmarks.md with its "tracker-gpu" section filled in (copy it
# over this checkout's, then review the diff). About 3 minutes on an H200, plus the machine's start.
set -uo pipefail
OUT=${OUT:-/tmp/gradwatch-device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' >>"$OUT/gpu.txt" 2>&1

# 1. Every test marked gpu (CUDA paths: no sync on unlogged steps, one copy per logged step, AMP, bf16).
python3 -m pytest -q -m gpu -p no:cacheprovider tests/tracker 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}

# 2. The tracker's overhead on the GPU, side by side (writes the "tracker-gpu" section of docs/benchmarks.md).
timeout 360 python3 benchmarks/tracker_overhead.py --device cuda --models M1,M2 --rounds 30 --per-round 10 \
    --warmup 2 --host-reps 300 --targets-only --write 2>&1 | tee "$OUT/tracker-overhead-gpu.log"
bench=${PIPESTATUS[0]}
cp docs/benchmarks.md "$OUT/benchmarks.md"
echo "pytest exit $tests, benchmark exit $bench" | tee -a "$OUT/gpu.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
