"""The nunchaku export of a shipped config against its consumers, on the real architecture at real size (random
weights offline): DeepCompressor's converter (deepcompressor-toolkit 0.1.0) run on the tree's cache/ files, tensor by
tensor, and a float64 model of nunchaku's kernel on every layer's real input (tests/reference/nunchaku_kernel.py).

    python benchmarks/nunchaku_consumers.py [configs/hiera_tiny_w4a4_nunchaku.yaml] [num_images]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reference.nunchaku_kernel import check_tree  # noqa: E402


def main(config: str = "configs/hiera_tiny_w4a4_nunchaku.yaml", images: int = 2) -> dict:
    from flows.ptq import sam2_ptq
    tmp = Path(tempfile.mkdtemp(prefix="nunchaku-consumers-"))
    t0 = time.time()
    out = Path(sam2_ptq(str(ROOT / config), [
        "model.random_init=true", "model.device=cpu", f"quant.calib.path={ROOT / 'examples/images'}",
        f"quant.calib.num_samples={images}", "quant.eval.num_samples=1", "quant.eval.points_per_side=2",
        f"cache.root={tmp / 'cache'}", f"output.root={tmp / 'out'}"]))
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    res = check_tree(out, pixels)
    summary = {"config": config, "layers": len(res), "shifted": sum(n.endswith("mlp.proj_out") for n in res),
               "tensors_differing": {n: r["differs"] for n, r in res.items() if r["differs"]},
               "bias_max_ulps": max(r["bias_ulps"] for r in res.values()),
               "kernel_rel_err_max": max(r["kernel_rel_err"] for r in res.values()),
               "pipeline_seconds": round(time.time() - t0, 1)}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(*sys.argv[1:2], *[int(a) for a in sys.argv[2:3]])
