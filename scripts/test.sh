#!/usr/bin/env bash
# Set up, lint, then run the whole test suite (CPU, offline; GPU tests are skipped without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
