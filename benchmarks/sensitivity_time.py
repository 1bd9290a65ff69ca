"""Sensitivity stage cost: one trial per layer and image, started at the layer's block (blocks before it replay
their recorded float outputs) against the former full encoder forward per trial. Real tiny architecture at 1024²,
random weights, every layer's fake-quant sint4 weight (the cost does not depend on the values).

    python benchmarks/sensitivity_time.py [tiny] [num_images]
"""
from __future__ import annotations

import json
import sys
import time

import torch

from sam2ptq_core.algorithms.quantizers import fake_quantize
from sam2ptq_core.algorithms.scheme import LayerScheme
from sam2ptq_core.sam2.loading import build_random, quantizable_linears
from sam2ptq_core.sam2.quantized_model import LayerArtifacts, swapped
from sam2ptq_core.sam2.sensitivity import layer_sensitivity


def main(name: str = "tiny", images: int = 2) -> dict:
    torch.set_num_threads(2)
    m = build_random(name, 0)
    lin = quantizable_linears(m)
    w4a4 = LayerScheme("sint4", 64, "sint4", 64)
    arts = {n: LayerArtifacts(w4a4, fake_quantize(mod.weight.detach(), "sint4", 64), mod.bias.detach(), None, None,
                              None) for n, mod in lin.items()}
    g = torch.Generator().manual_seed(0)
    pixels = [torch.randn(1, 3, 1024, 1024, generator=g) for _ in range(images)]
    t0 = time.time()
    layer_sensitivity(m, arts, pixels)
    replay = time.time() - t0
    t0 = time.time()
    with torch.inference_mode():  # the former method: a full forward for every layer and image
        for px in pixels:
            m.get_image_embeddings(px)
        for n, art in arts.items():
            with swapped(m, n, art):
                for px in pixels:
                    m.get_image_embeddings(px)
    full = time.time() - t0
    res = {"model": name, "images": images, "layers": len(arts), "replay_s": round(replay, 1),
           "full_forward_s": round(full, 1), "speedup": round(full / replay, 2)}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(*sys.argv[1:2], *[int(a) for a in sys.argv[2:3]])
