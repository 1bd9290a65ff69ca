"""Bytes on disk: the FP16 image encoder vs the DeepCompressor-style cache files and the nunchaku W4A4 files, for
tiny and large. Sizes do not depend on the values, so layers are RTN-quantized (sint4 g64, rank-32 branch) here
instead of running the whole pipeline.

    python benchmarks/export_sizes.py tiny large
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from sam2ptq_core.algorithms.quantizers import dequantize, quantize
from sam2ptq_core.algorithms.scheme import LayerScheme
from sam2ptq_core.config import load_config
from sam2ptq_core.export.cache_files import write_cache_files
from sam2ptq_core.export.nunchaku import write_nunchaku
from sam2ptq_core.sam2.loading import build_random, quantizable_linears


def sizes(name: str) -> dict:
    cfg = load_config(None, [f"model.name={name}", "quant.wgts.dtype=sint4", "quant.wgts.group_shapes=[[1, 64]]",
                             "quant.ipts.dtype=sint4", "quant.ipts.group_shapes=[[1, 64]]",
                             "quant.wgts.low_rank={rank: 32}", "quant.wgts.scale_dtype=float16", "quant.smooth={}"])
    m = build_random(name, 0)
    layers = quantizable_linears(m)
    g = torch.Generator().manual_seed(0)
    qlayers, smooth = {}, {}
    for n, mod in layers.items():
        q = quantize(mod.weight.detach(), "sint4", 64, scale_dtype=torch.float16)
        out_f, in_f = mod.weight.shape
        bias = mod.bias.detach().half().float()
        qlayers[n] = {"weight": dequantize(q), "codes": q.codes, "scale": q.qparams.scale, "zero": torch.empty(0),
                      "bias": bias, "kernel_bias": bias, "a": torch.randn(32, in_f, generator=g).half().float(),
                      "b": torch.randn(out_f, 32, generator=g).half().float()}
        smooth[n] = torch.ones(in_f)
    tmp = Path(tempfile.mkdtemp())
    enc16 = {k: v.half().contiguous() for k, v in m.vision_encoder.state_dict().items()}
    save_file(enc16, str(tmp / "fp16.safetensors"))
    schemes = dict.fromkeys(qlayers, LayerScheme("sint4", 64, "sint4", 64, rank=32))
    write_cache_files(tmp / "cache", m.state_dict(), qlayers, schemes, smooth)
    write_nunchaku(tmp / "nunchaku", cfg, m, qlayers, smooth, schemes)
    mb = lambda p: p.stat().st_size / 2**20  # noqa: E731
    return {"model": name, "fp16_encoder_mb": mb(tmp / "fp16.safetensors"),
            "cache_files_mb": {p.name: round(mb(p), 1) for p in sorted((tmp / "cache").iterdir())},
            "nunchaku_mb": {p.name: round(mb(p), 1) for p in sorted((tmp / "nunchaku").iterdir())}}


def main() -> None:
    for name in sys.argv[1:] or ["tiny", "large"]:
        print(sizes(name), flush=True)


if __name__ == "__main__":
    main()
