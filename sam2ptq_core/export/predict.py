"""``quantize_sam2.py predict``: run a quantized output tree on one image and save a mask overlay."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["main"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="quantize_sam2.py predict",
                                description="Segment one image with a quantized SAM2 output tree.")
    p.add_argument("--run", required=True, help="output directory written by quantize_sam2.py")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--point", action="append", required=True, help="foreground point X,Y in pixels (repeatable)")
    p.add_argument("--format", choices=["cache", "nunchaku"], default="cache", help="which files to load")
    p.add_argument("--out", default="prediction.png", help="overlay PNG to write (default: prediction.png)")
    a = p.parse_args(argv)
    from ..pipeline.config import load_config
    from ..sam2.evaluation import predict_masks
    from ..sam2.images import load_rgb, normalize, resize_uint8
    from .reader import load_quantized
    from .report import RANDOM_BANNER, plot_mask
    try:
        pts = torch.tensor([[float(v) for v in s.split(",")] for s in a.point])
        if pts.shape[1] != 2:
            raise ValueError
    except ValueError:
        print(f"error: --point must look like X,Y (got {a.point})", file=sys.stderr)
        return 2
    try:
        cfg = load_config(Path(a.run) / "config.yaml")
        model = load_quantized(a.run, a.format)
        im = load_rgb(Path(a.image))
    except (OSError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    size = cfg.quant.calib.image_size
    with torch.inference_mode():
        emb = model.get_image_embeddings(normalize(resize_uint8(im, size))[None])
        masks = predict_masks(model, emb, size, (im.height, im.width), points=pts)
    union = masks.any(0).numpy()
    title = ("RANDOM WEIGHTS — " if cfg.model.random_init else "") + f"{cfg.model.name} quantized ({a.format})"
    plot_mask(np.asarray(im), union, pts.numpy(), Path(a.out), title)
    print(f"{a.out}: mask covers {100 * union.mean():.1f} % of the image"
          + (f" ({RANDOM_BANNER})" if cfg.model.random_init else ""))
    return 0
