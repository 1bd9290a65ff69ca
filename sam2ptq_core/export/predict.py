"""``quantize_sam2.py predict``: run a quantized output tree on one image; write the binary mask (``--out``, a
black/white PNG at the image's size) and an overlay figure beside it (``<out stem>_overlay.png``)."""
from __future__ import annotations

import argparse
import json
import logging
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
    p.add_argument("--out", default="mask.png",
                   help="binary mask PNG to write (255 = object; default: mask.png); the overlay figure goes beside "
                        "it as <name>_overlay.png")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where to run (default: the run's model.device)")
    p.add_argument("--runtime", choices=["auto", "openvino", "onnxruntime", "fake"], default="auto",
                   help="the encoder on real int8 kernels (the tree's onnx/encoder.onnx on OpenVINO or ONNX Runtime, "
                        "CPU) or fake quantization in torch; auto: the fastest available here (default)")
    a = p.parse_args(argv)
    try:
        run, im, pts = _checked_inputs(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ..config import load_config
    from ..sam2.evaluation import predict_masks
    from ..sam2.images import normalize, resize_uint8
    from .reader import load_quantized
    from .report import RANDOM_BANNER, plot_mask
    try:
        cfg = load_config(run / "config.yaml")
        model = load_quantized(run, a.format)
        device = a.device or cfg.model.device
        runtime = _runtime(a, run, device)
        precision = _precision(run, cfg) if runtime != "fake" else "auto"
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("error: the run was quantized for cuda but no CUDA device is available; add --device cpu",
              file=sys.stderr)
        return 2
    model = model.to(device)
    if runtime != "fake":
        from .runtimes import RuntimeSam2, open_runtime
        onnx = run / "onnx" / "encoder.onnx"
        try:
            encoder = open_runtime(onnx, runtime, precision=precision, cache=_model_cache(cfg))
        except Exception as e:  # a compile, file or cache failure: one line, whatever the runtime raises
            print(f"error: {runtime} cannot open {onnx} ({_reason(e)}); export the tree again (quantize with "
                  "--onnx '{}') or use --runtime fake", file=sys.stderr)
            return 2
        model = RuntimeSam2(model, encoder)
    size = cfg.quant.calib.image_size
    with torch.inference_mode():
        emb = model.get_image_embeddings(normalize(resize_uint8(im, size))[None].to(device))
        masks = predict_masks(model, emb, size, (im.height, im.width), points=pts)
    union = masks.any(0).numpy()
    title = (("RANDOM WEIGHTS — " if cfg.model.random_init else "") + f"{cfg.model.name} quantized ("
             + (f"{runtime}, onnx" if runtime != "fake" else a.format) + ")")
    from PIL import Image
    out = Path(a.out)
    Image.fromarray((union * 255).astype(np.uint8), mode="L").save(out, format="PNG")
    overlay = out.with_name(out.stem + "_overlay.png")
    plot_mask(np.asarray(im), union, pts.numpy(), overlay, title)
    print(f"{out}: mask covers {100 * union.mean():.1f} % of the image (overlay: {overlay})"
          + (f" ({RANDOM_BANNER})" if cfg.model.random_init else ""))
    return 0


def _runtime(a, run: Path, device: str) -> str:
    """The encoder's runtime: a graph runtime on the tree's ONNX file (CPU) or "fake" (torch fake quantization)."""
    from .runtimes import available_runtimes, pick_runtime
    has_onnx = (run / "onnx" / "encoder.onnx").is_file()
    if a.runtime == "auto":
        usable = has_onnx and device == "cpu" and a.format == "cache" and available_runtimes()
        return pick_runtime("auto") if usable else "fake"
    if a.runtime == "fake":
        return "fake"
    if not has_onnx:
        raise ValueError(f"--runtime {a.runtime}: {run} has no onnx/encoder.onnx; quantize with the onnx key "
                         "(--onnx '{}') or use --runtime fake")
    if device != "cpu" or a.format != "cache":
        raise ValueError(f"--runtime {a.runtime} runs on the CPU from the cache files; add --device cpu and drop "
                         "--format nunchaku")
    return pick_runtime(a.runtime)


def _precision(run: Path, cfg) -> str:
    """The float precision the run evaluated its ONNX file with: onnx/onnx.json's "precision_setting" (the tree's
    onnx.precision for a file written before that was recorded)."""
    f = run / "onnx" / "onnx.json"
    try:
        info = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{f} cannot be read ({str(e).splitlines()[0]}); export the tree again or use --runtime "
                         "fake") from None
    got = info.get("precision_setting") or (cfg.onnx.precision if cfg.onnx is not None else "auto")
    if got not in ("auto", "f32"):
        raise ValueError(f"{f}: precision_setting {got!r} is not auto or f32; export the tree again")
    return got


class _Stderr(logging.Handler):
    """predict's console for the runtime's messages: one line each, warnings as ``warning: …``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(("warning: " if record.levelno >= logging.WARNING else "") + record.getMessage(), file=sys.stderr,
              flush=True)


def _model_cache(cfg):
    """OpenVINO's model cache: the one the run's pipeline fills on this machine (``ModelCache.of_run``, e.g.
    ``<cache.root>/openvino``) when it exists, else ``ModelCache.default()`` (~/.cache/sam2ptq/openvino; never a
    folder made from the tree's relative cache.root in some other working directory), bounded by the tree's
    cache.local_max_gb. Its messages go to stderr."""
    from dataclasses import replace

    from .model_cache import ModelCache
    console = logging.Logger("sam2ptq.predict", logging.INFO)  # not registered: nothing global is configured
    console.addHandler(_Stderr())
    ours = ModelCache.of_run(cfg.cache, console)
    return ours if ours.dir.is_dir() else replace(ModelCache.default(console), max_bytes=ours.max_bytes)


def _reason(e: Exception) -> str:
    """A runtime's error on one line, without OpenVINO's source locations."""
    import re
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not re.match(r"^(Exception from |Check '.*' failed at )\S+:\d+", ln)]
    return " ".join(said or lines or [type(e).__name__])[:300]


def _checked_inputs(a) -> tuple[Path, object, torch.Tensor]:
    """Everything that can be checked before the model loads; raises ValueError with one line naming the fix."""
    import math

    from ..sam2.images import load_rgb
    run = Path(a.run)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"--run {run} is not a sam2ptq output tree (no config.yaml there); pass a directory written "
                         f"by quantize_sam2.py, e.g. outputs/sam2/<job>")
    out_dir = Path(a.out).resolve().parent
    if not out_dir.is_dir():
        raise ValueError(f"--out {a.out}: folder {out_dir} does not exist; create it or write the PNG elsewhere")
    try:
        im = load_rgb(Path(a.image))
    except (OSError, ValueError) as e:
        raise ValueError(f"--image {a.image} cannot be read as an image ({str(e).splitlines()[0]})") from None
    pts = []
    for s in a.point:
        try:
            x, y = (float(v) for v in s.split(","))
        except ValueError:
            raise ValueError(f"--point must be two numbers X,Y in pixels, got {s!r}") from None
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < im.width and 0 <= y < im.height):
            raise ValueError(f"--point {s} is outside the image: {a.image} is {im.width}×{im.height} pixels, so "
                             f"0 ≤ X < {im.width} and 0 ≤ Y < {im.height}")
        pts.append((x, y))
    return run, im, torch.tensor(pts)
