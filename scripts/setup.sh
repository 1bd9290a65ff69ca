#!/usr/bin/env bash
# Create .venv with the CPU torch wheel first (a plain "torch" requirement would pull a multi-GB CUDA build),
# then install the project and its test tools. Returns at once when .venv was already installed for this exact
# pyproject.toml and this script (a stamp in .venv records their sha256). On a GPU machine install your CUDA torch
# build first. deepcompressor-toolkit (the converter the nunchaku export is tested against) is installed without its
# dependencies: they pin xformers/torchvision builds that would pull a second torch; its converter needs only torch.
# samexporter (its SAM2 ONNX client is the consumer the ONNX pair is tested against) likewise: it pins torch 2.10;
# its sam2_onnx module needs only onnxruntime, numpy and opencv (the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.sam2ptq-installed
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e '.[dev,onnx,openvino,video]'
python -m pip install -q --no-deps 'deepcompressor-toolkit==0.1.0'
python -m pip install -q --no-deps 'samexporter==0.5.0'
echo "$WANT" > "$STAMP"
