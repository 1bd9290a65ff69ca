"""Per-layer fidelity of the defaults: alternating low-rank fit scored with quantized inputs, and GPTQ act-order.

Every trunk linear of SAM2.1-tiny (RANDOM WEIGHTS) with the statistics the demo captured (4 bundled photos at 1024²),
W4A4 (sint4 group 64 weights and activations, rank-32 branch, GPTQ), no smoothing or rotation. The token reservoir is
split in two: the first half fits the branch (its score), the second half measures the output error (held out; the
GPTQ Hessian still covers every token). Output: mean and median relative output error per setting, and seconds.

    python quantize_sam2.py --config configs/demo.yaml          # once, to capture
    python benchmarks/fidelity_ablation.py cache/sam2/capture_activations/<key>/acts.pt
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2ptq_core.algorithms.layer_recipe import LayerSpec, layer_errors, quantize_layer  # noqa: E402
from sam2ptq_core.algorithms.statistics import LayerStats  # noqa: E402
from sam2ptq_core.sam2.loading import build_random, quantizable_linears  # noqa: E402

SETTINGS = {
    "one-shot branch (old default), act_order off": dict(lowrank_iters=1, act_order=False),
    "alternating branch (new default), act_order off": dict(lowrank_iters=100, act_order=False),
    "alternating branch, act_order on": dict(lowrank_iters=100, act_order=True),
}


def main() -> None:
    acts = torch.load(sys.argv[1], weights_only=True)
    layers = quantizable_linears(build_random("tiny", 42, 1024))
    base = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=32, gptq=True, seed=42)
    out = {}
    for name, kw in SETTINGS.items():
        spec, errs, t = replace(base, **kw), [], time.perf_counter()
        for k, mod in layers.items():
            st = LayerStats.from_dict(acts[k])
            half = st.sample.shape[0] // 2
            fit = LayerStats(st.absmax, st.hessian_sum, st.n_tokens, st.sample[:half])
            W = mod.weight.detach().float()
            lq = quantize_layer(W, fit, None, None, spec)
            b = None if mod.bias is None else mod.bias.detach().float()
            errs.append(layer_errors(W, b, st.sample[half:].float(), lq, None, None, spec)["output_rel_err"])
        out[name] = {"mean_output_rel_err": statistics.mean(errs), "median": statistics.median(errs),
                     "seconds": round(time.perf_counter() - t, 1), "layers": len(errs)}
        print(name, json.dumps(out[name]), flush=True)


if __name__ == "__main__":
    main()
