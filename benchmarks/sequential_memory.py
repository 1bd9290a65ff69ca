"""Sequential calibration: peak host memory and disk against the number of calibration images.

    python benchmarks/sequential_memory.py [--size 512] [--images 4 16] [--model tiny]

Each measurement runs in a fresh process (so ``ru_maxrss`` is its own): the real architecture with seeded RANDOM
WEIGHTS, random uint8 images, W4A4 (sint4 group 64, rank 8 branch, GPTQ, 4-point smoothing grid), every trunk block
calibrated on the quantized prefix's outputs (``pipeline/sequential.py``). Reports peak RSS, the largest size of the
on-disk hidden states and the wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, shutil, sys, tempfile, threading, time
from pathlib import Path
import torch
sys.path.insert(0, {root!r})
from sam2ptq_core.algorithms.layer_recipe import LayerSpec
from sam2ptq_core.algorithms.scheme import LayerScheme
from sam2ptq_core.algorithms.model_recipe import quantize_block
from sam2ptq_core.sam2.sequential import SequentialCalibrator
from sam2ptq_core.sam2.images import normalize
from sam2ptq_core.sam2.loading import build_random, quantizable_linears, trunk
torch.set_num_threads(2)
model = build_random({model!r}, 0, {size}, None).eval()
imgs = torch.randint(0, 256, ({n}, 3, {size}, {size}), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
work = Path(tempfile.mkdtemp())
peak_disk = [0]
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak_disk[0] = max(peak_disk[0], sum(f.stat().st_size for f in work.rglob("*.pt") if f.is_file()))
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
spec = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=8, block_size=128, seed=0)
cal = SequentialCalibrator(model, lambda: (normalize(imgs[i:i + 1]) for i in range({n})), work, 512, 0, (),
                           dict.fromkeys(quantizable_linears(model), LayerScheme("sint4", 64, "sint4", 64, rank=8)))
t0 = time.time()
for i in range(len(trunk(model).blocks)):
    layers = {{k: v for k, v in quantizable_linears(model).items() if k.split(".")[1] == str(i)}}
    r = quantize_block(layers, cal.stats(i), {{k: None for k in layers}}, spec, [(0.5, 0.5), (0.3, 0.7)], True, False,
                       "cpu")
    cal.quantized(i, r["qlayers"], r["smooth"], {{"random": False, "seed": 0, "layers": []}})
cal.stats(len(trunk(model).blocks) - 1)  # (the last block's inputs exist; nothing more to apply)
stop.set()
shutil.rmtree(work)
print(json.dumps({{"images": {n}, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_hidden_state_disk_mib": peak_disk[0] / 2**20, "seconds": time.time() - t0}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--model", default="tiny")
    a = ap.parse_args()
    print(f"RANDOM WEIGHTS — {a.model} at {a.size}², sequential W4A4 calibration of every trunk block")
    for n in a.images:
        code = CHILD.format(root=str(ROOT), model=a.model, size=a.size, n=n)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        print(json.dumps(json.loads(r.stdout.strip().splitlines()[-1])))


if __name__ == "__main__":
    main()
