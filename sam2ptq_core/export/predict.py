"""``quantize_sam2.py predict``: run a quantized output tree on one image with one prompt (points, positive and
negative, and/or a box); write the binary mask (``--out``, a black/white PNG at the image's size) and an overlay
beside it (``<out stem>_overlay.png``). On a graph runtime (openvino, onnxruntime) it runs the tree's ONNX pair
(``onnx_predictor``) and never imports torch; ``--runtime fake`` runs the torch model (fake quantization).
``--video`` tracks objects through a clip instead (``predict_video``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .onnx_predictor import Prompt

__all__ = ["main", "torch_prompt_masks"]

BANNER = "RANDOM WEIGHTS — not a real SAM2 checkpoint"  # = report.RANDOM_BANNER (report imports matplotlib; tested)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantize_sam2.py predict",
                                description="Segment one image with a quantized SAM2 output tree.")
    p.add_argument("--run", required=True, help="output directory written by quantize_sam2.py")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file")
    src.add_argument("--video", help="video file (anything FFmpeg decodes) or folder of frames: track the prompted "
                                     "objects from --frame on (writes --out as a folder)")
    p.add_argument("--point", action="append", default=[],
                   help="positive point X,Y in pixels (repeatable; all points and the box make one mask)")
    p.add_argument("--negative", action="append", default=[], help="negative point X,Y in pixels (repeatable)")
    p.add_argument("--box", default=None, help="box X1,Y1,X2,Y2 in pixels")
    p.add_argument("--format", choices=["cache", "nunchaku"], default="cache", help="which files to load")
    p.add_argument("--object", action="append", default=[], metavar="SPEC",
                   help="--video: one more object, e.g. 'box=100,80,300,400' or 'point=320,240 negative=300,200' "
                        "(repeatable; --point/--negative/--box give object 1)")
    p.add_argument("--frame", type=int, default=0, help="--video: the frame the prompts are on (default 0)")
    p.add_argument("--max-frames", type=int, default=None, help="--video: track at most this many frames")
    p.add_argument("--out", default=None,
                   help="binary mask PNG to write (255 = object; default: mask.png); the overlay goes beside "
                        "it as <name>_overlay.png. --video: the folder to write (default: video_masks)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where to run (default: the run's model.device)")
    p.add_argument("--runtime", choices=["auto", "openvino", "onnxruntime", "fake"], default="auto",
                   help="the tree's ONNX pair (onnx/sam2.1_hiera_<name>.{encoder,decoder}.onnx) on OpenVINO or ONNX "
                        "Runtime (CPU, no torch) or fake quantization in torch; auto: the fastest available here "
                        "(ONNX Runtime on an x86 CPU without VNNI; default)")
    return p


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv)
    if a.video is not None:
        from .predict_video import main as video_main
        return video_main(a)
    a.out = a.out or "mask.png"
    from ..config import load_config
    try:
        run, im, prompt = _checked_inputs(a)
        cfg = load_config(run / "config.yaml")
        device = a.device or cfg.model.device
        runtime = _runtime(a, run, cfg.model.name, device)
        if runtime == "fake":
            mask, times = _predict_torch(run, a.format, device, cfg, im, prompt)
        else:
            mask, times = _predict_onnx(run, runtime, cfg, im, prompt)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    import numpy as np
    from PIL import Image

    from .onnx_predictor import overlay
    title = ("RANDOM WEIGHTS — " if cfg.model.random_init else "") + f"{cfg.model.name} quantized ({runtime})"
    out = Path(a.out)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out, format="PNG")
    ov = out.with_name(out.stem + "_overlay.png")
    overlay(im, mask, prompt, ov, title)
    print(f"{out}: mask covers {100 * mask.mean():.1f} % of the image (overlay: {ov}); encoder "
          f"{1000 * times[0]:.0f} ms, prompt {1000 * times[1]:.1f} ms ({runtime})"
          + (f" ({BANNER})" if cfg.model.random_init else ""))
    return 0


def _predict_onnx(run: Path, runtime: str, cfg, im, prompt: Prompt):
    """The tree's ONNX pair on ``runtime`` (numpy, pillow and the runtime only): (mask, (encoder s, prompt s))."""
    from .onnx_interface import find_pair
    from .onnx_predictor import CannotOpen, OnnxSam2
    from .runtimes import NoVnni
    enc, dec = find_pair(run / "onnx", cfg.model.name)
    try:
        sam = OnnxSam2(enc, dec, runtime, precision=_precision(run, cfg), cache=_model_cache(cfg))
    except NoVnni as e:
        raise ValueError(str(e)) from None
    except CannotOpen as e:
        raise ValueError(f"{runtime} cannot open {e.path} ({_reason(e.cause)}); export the tree again (quantize "
                         "with --onnx '{}') or use --runtime fake") from None
    t_enc = sam.set_image(im)
    pred = sam.predict(prompt)
    return pred.mask, (t_enc, pred.seconds)


def torch_prompt_masks(model, embeddings, size: int, orig_hw: tuple[int, int], prompt: Prompt):
    """The torch ``Sam2Model`` path of one prompt: ``model(image_embeddings=…, multimask_output=True)`` on the
    prompt's arrays (``Prompt.arrays``: the decoder's points and labels), then ``onnx_predictor.best_mask``.
    Returns (bool mask [H, W], multimask logits [3, S/4, S/4] numpy, iou [3] numpy)."""
    import torch

    from .onnx_predictor import best_mask
    h, w = orig_hw
    coords, labels = prompt.arrays(w, h, size)
    dev, dt = embeddings[0].device, next(model.parameters()).dtype
    with torch.inference_mode():
        out = model(image_embeddings=[e.to(dt) for e in embeddings],
                    input_points=torch.from_numpy(coords)[None].to(dev, dt),
                    input_labels=torch.from_numpy(labels)[None].to(dev).long(), multimask_output=True)
    logits, iou = out.pred_masks[0, 0].float().cpu().numpy(), out.iou_scores[0, 0].float().cpu().numpy()
    return best_mask(logits, iou, h, w)[0], logits, iou


def _predict_torch(run: Path, fmt: str, device: str, cfg, im, prompt: Prompt):
    """The torch model read back from the tree (fake quantization): (mask, (encoder s, prompt s))."""
    import time

    import torch

    from ..sam2.images import normalize, resize_uint8
    from .reader import load_quantized
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("the run was quantized for cuda but no CUDA device is available; add --device cpu")
    try:
        model = load_quantized(run, fmt).to(device)
    except (OSError, RuntimeError) as e:
        raise ValueError(str(e).splitlines()[0]) from None
    size = cfg.quant.calib.image_size
    t0 = time.perf_counter()
    with torch.inference_mode():
        emb = model.get_image_embeddings(normalize(resize_uint8(im, size))[None].to(device))
    t1 = time.perf_counter()
    mask = torch_prompt_masks(model, emb, size, (im.height, im.width), prompt)[0]
    return mask, (t1 - t0, time.perf_counter() - t1)


def _runtime(a, run: Path, model_name: str, device: str) -> str:
    """A graph runtime on the tree's ONNX pair (CPU) or "fake" (torch fake quantization)."""
    from .onnx_interface import pair_names
    from .runtimes import available_runtimes, pick_runtime
    has_onnx = (run / "onnx" / pair_names(model_name)["encoder"]).is_file()
    if a.runtime == "auto":
        usable = has_onnx and device == "cpu" and a.format == "cache" and available_runtimes()
        return pick_runtime("auto") if usable else "fake"
    if a.runtime == "fake":
        return "fake"
    if not has_onnx:
        raise ValueError(f"--runtime {a.runtime}: {run} has no onnx/{pair_names(model_name)['encoder']}; quantize "
                         "with the onnx key (--onnx '{}') or use --runtime fake")
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


def _xy(flag: str, s: str, n: int, im, path: str) -> list[float]:
    """``s`` as ``n`` numbers in pixels inside ``im``, pairs as (x, y); ValueError with one line otherwise."""
    import math
    try:
        v = [float(t) for t in s.split(",")]
    except ValueError:
        v = []
    if len(v) != n:
        what = "two numbers X,Y" if n == 2 else "four numbers X1,Y1,X2,Y2"
        raise ValueError(f"--{flag} must be {what} in pixels, got {s!r}")
    for x, y in zip(v[::2], v[1::2]):
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < im.width and 0 <= y < im.height):
            raise ValueError(f"--{flag} {s} is outside the image: {path} is {im.width}×{im.height} pixels, so "
                             f"0 ≤ X < {im.width} and 0 ≤ Y < {im.height}")
    return v


def _run_dir(a) -> Path:
    """``--run`` as a sam2ptq output tree; ValueError with one line otherwise."""
    run = Path(a.run)
    if not (run / "config.yaml").is_file():
        raise ValueError(f"--run {run} is not a sam2ptq output tree (no config.yaml there); pass a directory written "
                         f"by quantize_sam2.py, e.g. outputs/sam2/<job>")
    return run


def _checked_inputs(a) -> tuple[Path, object, Prompt]:
    """Everything that can be checked before the model loads; raises ValueError with one line naming the fix."""
    from ..sam2.images import load_rgb
    run = _run_dir(a)
    out_dir = Path(a.out).resolve().parent
    if not out_dir.is_dir():
        raise ValueError(f"--out {a.out}: folder {out_dir} does not exist; create it or write the PNG elsewhere")
    try:
        im = load_rgb(Path(a.image))
    except (OSError, ValueError) as e:
        raise ValueError(f"--image {a.image} cannot be read as an image ({str(e).splitlines()[0]})") from None
    if not (a.point or a.negative or a.box):
        raise ValueError("give a prompt: --point X,Y (positive), --negative X,Y, or --box X1,Y1,X2,Y2")
    pos = [tuple(_xy("point", s, 2, im, a.image)) for s in a.point]
    neg = [tuple(_xy("negative", s, 2, im, a.image)) for s in a.negative]
    box = tuple(_xy("box", a.box, 4, im, a.image)) if a.box else None
    if box is not None and not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"--box {a.box}: X1 < X2 and Y1 < Y2 are needed (top-left, then bottom-right)")
    return run, im, Prompt(pos + neg, [1] * len(pos) + [0] * len(neg), box)
