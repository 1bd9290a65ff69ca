"""Smoothing before the rotation (sam2ptq: x' = (x / s)·R) against smoothing in the rotated basis (DeepCompressor,
QuaRot: x' = (x·R) / s), and no rotation, per layer.

All 51 trunk linears of SAM2.1-tiny (RANDOM WEIGHTS) with the demo's statistics, W4A4 (sint4 g64, rank-32 one-shot
branch, RTN), a 19-pair grid (num_grids 10, β = −2). Score: the best candidate's relative output error on the token
sample (in-sample, as the search sees it).

    python benchmarks/smoothing_order.py cache/sam2/capture_activations/<key>/acts.pt
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2ptq_core.algorithms.layer_recipe import LayerSpec, smoothing_objective  # noqa: E402
from sam2ptq_core.algorithms.rotation import Rotation  # noqa: E402
from sam2ptq_core.algorithms.smoothing import search_smoothing, smooth_candidates  # noqa: E402
from sam2ptq_core.sam2.loading import build_random, quantizable_linears  # noqa: E402


def _best(X: torch.Tensor, W: torch.Tensor, R, spec, cands) -> float:
    res = search_smoothing(X.abs().amax(0), W.abs().amax(0), cands, smoothing_objective(X, W, R, spec))
    return (min(e for *_, e in res.log) / float((X @ W.T).pow(2).sum())) ** 0.5


def main() -> None:
    acts = torch.load(sys.argv[1], weights_only=True)
    layers = quantizable_linears(build_random("tiny", 42, 1024))
    spec = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=32, seed=42)
    cands = smooth_candidates("GridSearch", 0.5, -2, 10)
    rows = {"no rotation": [], "smooth, then rotate (sam2ptq)": [], "rotate, then smooth (DeepCompressor)": []}
    for k, mod in layers.items():
        X, W = acts[k]["sample"].float(), mod.weight.detach().float()
        R = Rotation(W.shape[1])
        rows["no rotation"].append(_best(X, W, None, spec, cands))
        rows["smooth, then rotate (sam2ptq)"].append(_best(X, W, R, spec, cands))
        rows["rotate, then smooth (DeepCompressor)"].append(_best(R.apply(X), R.apply(W), None, spec, cands))
    out = {name: {"mean_rel_output_err": statistics.mean(v), "median": statistics.median(v)}
           for name, v in rows.items()}
    a, b = rows["smooth, then rotate (sam2ptq)"], rows["rotate, then smooth (DeepCompressor)"]
    out["layers where rotate-then-smooth is better"] = sum(y < x for x, y in zip(a, b))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
