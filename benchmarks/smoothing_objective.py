"""The smoothing search's objective in float32 (the default) against float64 (what it used before): speed and
whether the chosen candidate or its objective changes.

SAM2.1-tiny (RANDOM WEIGHTS) layers with the demo's captured statistics, W4A4 (sint4 g64, rank-32 one-shot branch,
RTN), the default 39-pair grid, no rotation.

    python benchmarks/smoothing_objective.py cache/sam2/capture_activations/<key>/acts.pt [--exact-svd]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2ptq_core.algorithms.layer_recipe import LayerSpec, smoothing_objective  # noqa: E402
from sam2ptq_core.algorithms.smoothing import search_smoothing, smooth_candidates  # noqa: E402
from sam2ptq_core.algorithms.statistics import LayerStats  # noqa: E402
from sam2ptq_core.sam2.loading import build_random, quantizable_linears  # noqa: E402

LAYERS = ["blocks.0.attn.qkv", "blocks.3.mlp.proj_in", "blocks.3.mlp.proj_out", "blocks.8.attn.qkv",
          "blocks.10.mlp.proj_in", "blocks.11.mlp.proj_out"]


def main() -> None:
    acts = torch.load(sys.argv[1], weights_only=True)
    layers = quantizable_linears(build_random("tiny", 42, 1024))
    exact = len(sys.argv) > 2 and sys.argv[2] == "--exact-svd"
    spec = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=32, seed=42,
                     randomized_svd=not exact)
    cands = smooth_candidates("GridSearch", 0.5, -2, 20)
    rows = []
    for name in LAYERS:
        st, W = LayerStats.from_dict(acts[name]), layers[name].weight.detach().float()
        row = {"layer": f"{name} {W.shape[1]}→{W.shape[0]}"}
        res = {}
        for dt in (torch.float32, torch.float64):
            t = time.perf_counter()
            res[dt] = search_smoothing(st.absmax, W.abs().amax(0), cands, smoothing_objective(st.sample, W, None, spec,
                                                                                              dt))
            row[f"{str(dt)[6:]}_s"] = round(time.perf_counter() - t, 2)
        a, b = res[torch.float32], res[torch.float64]
        row["same_choice"] = (a.alpha, a.beta) == (b.alpha, b.beta)
        errs32, errs64 = [e for *_, e in a.log], [e for *_, e in b.log]
        row["max_rel_diff_objective"] = round(max(abs(x - y) / y for x, y in zip(errs32, errs64)), 4)
        # what choosing in float32 costs, judged by the float64 objective
        pick = [i for i, (al, be, _) in enumerate(b.log) if (al, be) == (a.alpha, a.beta)][0]
        row["regret_float64"] = round(errs64[pick] / min(errs64) - 1, 5)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
