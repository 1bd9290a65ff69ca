#!/usr/bin/env bash
# The prepared GPU checks for a session lent the GPU machine (issue "Run it where users run it"). Prepare here:
#   bash scripts/device_wheels.sh            # .whl/: what the machine's image lacks (prefect, diskcache, ...)
# then one device call per phase, carrying .whl, e.g. run(command="bash scripts/gpu_checks.sh smoke", carry=[".whl"]):
#   smoke   GPU-marked tests, benchmarks/core.py on CUDA, tiny W4A8 on 6 images          (≈ 3 min)
#   large   large W4A4 SVDQuant on 128 images at 1024², bf16, per-stage times and memory  (target ≤ 2 min)
# Everything lands in $OUT (the device tool's folder), default ./gpu-out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: run scripts/device_wheels.sh here and carry .whl" >&2; exit 2; }
export PYTHONPATH=$PWD:/tmp/site DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1 \
    PREFECT_HOME=/tmp/prefect-home
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
case "${1:-smoke}" in
smoke)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_devices.py 2>&1 | tee "$OUT/gpu_tests.log"
    python3 benchmarks/core.py --device cuda --json "$OUT/core_cuda.json" 2>&1 | tee "$OUT/core_cuda.log"
    python3 benchmarks/gpu_pipeline.py tiny w4a8 6 "$OUT" 2>&1 | tail -40 | tee "$OUT/tiny.log"
    ;;
large)
    python3 benchmarks/gpu_pipeline.py large w4a4 128 "$OUT" > "$OUT/large.log" 2>&1
    tail -40 "$OUT/large.log"
    ;;
*)
    echo "usage: $0 smoke|large" >&2
    exit 2
    ;;
esac
