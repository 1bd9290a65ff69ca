#!/usr/bin/env bash
# The main job offline: set up, then quantize SAM2.1-tiny (real architecture, SEEDED RANDOM WEIGHTS) on the bundled
# photos with configs/demo.yaml. Output: outputs/sam2/demo_tiny_w4a8/. A second run reuses every stage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python quantize_sam2.py --config configs/demo.yaml "$@"
