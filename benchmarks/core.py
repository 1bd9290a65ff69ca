"""Speed of the core algorithms on SAM2-large's real layer shapes (CPU or CUDA): GPTQ and the low-rank branch.

    python benchmarks/core.py [--device cpu|cuda] [--tokens 4096] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sam2ptq_core.algorithms.gptq import gptq_quantize, proxy_loss
from sam2ptq_core.algorithms.lowrank import low_rank_decompose
from sam2ptq_core.algorithms.quantizers import fake_quantize

SHAPES = {  # name: (in, out)
    "large s4 attn.qkv 1152→3456": (1152, 3456),
    "large s4 mlp.proj_in 1152→4608": (1152, 4608),
    "large s4 mlp.proj_out 4608→1152": (4608, 1152),
    "large s3 attn.qkv 576→1728": (576, 1728),
    "large s3 mlp.proj_in 576→2304": (576, 2304),
    "large s3 mlp.proj_out 2304→576": (2304, 576),
}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(dev: torch.device, tokens: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, (k, n) in SHAPES.items():
        X = (torch.randn(tokens, k // 8, generator=g) @ torch.randn(k // 8, k, generator=g) * 0.3
             + torch.randn(tokens, k, generator=g)).to(dev)
        H = X.T @ X
        W = (torch.randn(n, k, generator=g) * 0.02).to(dev)
        _sync(dev)
        t = time.perf_counter()
        r = gptq_quantize(W, H, "uint4", 128, 128)
        _sync(dev)
        t_gptq = time.perf_counter() - t
        ratio = proxy_loss(W, r.weight, H) / proxy_loss(W, fake_quantize(W, "uint4", 128), H)
        t = time.perf_counter()
        lr = low_rank_decompose(W, 32, "sint4", 64, randomized=True)
        _sync(dev)
        t_lr_rand = time.perf_counter() - t
        t = time.perf_counter()
        lr_exact = low_rank_decompose(W, 32, "sint4", 64, randomized=False)
        _sync(dev)
        t_lr_exact = time.perf_counter() - t
        rows.append({"layer": name, "gptq_s": round(t_gptq, 3), "gptq_loss_vs_rtn": round(ratio, 3),
                     "lowrank_randomized_s": round(t_lr_rand, 3), "lowrank_exact_s": round(t_lr_exact, 3),
                     "lowrank_err_rand_over_exact": round(lr.errors[0] / lr_exact.errors[0], 4)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--json", default="")
    a = p.parse_args()
    dev = torch.device(a.device)
    rows = bench(dev, a.tokens)
    info = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    print("| layer | GPTQ s (g128 b128) | GPTQ/RTN proxy loss | low-rank r32 randomized s | exact SVD s "
          "| err rand/exact |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['gptq_s']} | {r['gptq_loss_vs_rtn']} | {r['lowrank_randomized_s']} | "
              f"{r['lowrank_exact_s']} | {r['lowrank_err_rand_over_exact']} |")
    if a.json:
        open(a.json, "w").write(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
