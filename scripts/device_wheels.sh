#!/usr/bin/env bash
# Put into .whl/ exactly the wheels the lent GPU machine (Python 3.12, x86-64, no package registry) lacks to run
# sam2ptq: the project's dependencies resolved for that Python, minus what its image already holds (the list in
# the device tool's KINDS.md, copied below). Then check the set is complete: every requirement of a carried wheel is
# carried or in the image. On the machine: pip install --no-index --no-deps --target /tmp/site .whl/*.whl.
#
#   bash scripts/device_wheels.sh          # writes .whl/ (ignored by git), prints its size
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.whl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# the device image's packages (KINDS.md, "Python packages already there", read 2026-11-17)
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp"
# what sam2ptq needs beyond torch and transformers (pyproject's dependencies, without the two the image pins)
NEED=$("$PY" - <<'PY'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if not d.split(">")[0].split("<")[0].split("=")[0].strip() in ("transformers",)))
PY
)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
# shellcheck disable=SC2086
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d "$TMP" $NEED
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" - "$TMP" "$OUT" "$IMAGE" <<'PY'
import re, shutil, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
tmp, out, image = Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3].split())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
image = {norm(n) for n in image}
carried = {}
for w in sorted(tmp.glob("*.whl")):
    name = norm(w.name.split("-")[0])
    if name not in image:
        carried[name] = w
        shutil.copy2(w, out / w.name)
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "os_name": "posix", "extra": ""}
missing = []
for name, w in carried.items():
    meta = next(n for n in zipfile.ZipFile(w).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(w).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate(env):
                if norm(r.name) not in carried and norm(r.name) not in image:
                    missing.append(f"{name} needs {r}")
if missing:
    sys.exit("incomplete wheel set:\n" + "\n".join(missing))
size = sum(p.stat().st_size for p in out.glob("*.whl"))
print(f"{len(carried)} wheels, {size / 2**20:.1f} MiB in {out}/ (limit 64 MiB with the working tree): "
      + ", ".join(sorted(carried)))
if size > 60 * 2**20:
    sys.exit("the wheel set is over 60 MiB: it would not travel with the working tree")
PY
