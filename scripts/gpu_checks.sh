#!/usr/bin/env bash
# One-shot GPU checks for a session that is lent a GPU machine (torch 2.11 + transformers there, no prefect or
# diskcache: carry wheels in .whl/ as the device tool's README explains, then run this from the repo root).
# Writes everything under ${OUT:-./gpu-out}. Not yet run on a GPU: written before any GPU was lent.
#   1. GPU-marked tests (CUDA vs CPU agreement)
#   2. core benchmark on CUDA (GPTQ / low-rank on SAM2-large layer shapes)
#   3. the pipeline on CUDA: tiny W4A8 and large W4A4 on the bundled photos, random weights, bf16, timed per stage
set -uo pipefail
export OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1 PREFECT_HOME=/tmp/prefect-home
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/core.py --device cuda --json "$OUT/core_cuda.json" 2>&1 | tee "$OUT/core_cuda.log"
for job in "tiny w4a8" "large w4a4"; do
  set -- $job
  /usr/bin/time -v python3 quantize_sam2.py --config "configs/hiera_$1_$2.yaml" --model.random_init true \
      --model.device cuda --model.dtype bfloat16 --quant.calib.path examples/images --quant.calib.num_samples 6 \
      --quant.eval.num_samples 4 --cache.root /tmp/sam2-cache --output.root "$OUT/runs" \
      > "$OUT/pipeline_$1_$2.log" 2>&1
  python3 - "$1" "$2" <<'PY' >> "$OUT/pipeline_times.txt"
import json, sys, pathlib
name, kind = sys.argv[1], sys.argv[2]
out = pathlib.Path(__import__("os").environ.get("OUT", "gpu-out")) / "runs" / f"hiera_{name}_{kind}"
st = json.loads((out / "stages.json").read_text())
for s, v in st.items():
    man = next(pathlib.Path("/tmp/sam2-cache", s).glob(v["key"][:24] + "/manifest.json"))
    print(name, kind, s, json.loads(man.read_text())["timing"]["seconds"])
PY
done
