"""``quantize_sam2.py predict --video``: track prompted objects through a clip with a quantized output tree.

Writes ``--out`` (a folder, built whole or not at all): ``masks/<frame>.png`` (DAVIS-style indexed PNGs: value k
where object k is), ``overlay.mp4`` (H.264, the masks tinted in), ``timing.json`` (per frame: encoder seconds
and the per-object part). The encoder runs on torch (fake quantization) or on a graph runtime; everything else of
SAM2's video path (transformers' ``Sam2VideoModel``) runs in torch."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from .onnx_predictor import Prompt

__all__ = ["main", "parse_object"]


def parse_object(spec: str, size: tuple[int, int], xy) -> Prompt:
    """``spec`` like 'point=320,240 negative=300,200 box=100,80,300,400' → one object's Prompt (pixels of a frame
    of ``size``); ``xy`` checks one coordinate list (``predict._xy``). ValueError with one line otherwise."""
    frame = SimpleNamespace(width=size[0], height=size[1])
    pos, neg, box = [], [], None
    for item in spec.replace(";", " ").split():
        key, _, val = item.partition("=")
        if key in ("point", "negative"):
            (pos if key == "point" else neg).append(tuple(xy(key, val, 2, frame, "the video")))
        elif key == "box" and box is None:
            box = tuple(xy("box", val, 4, frame, "the video"))
            if not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"--object {spec!r}: X1 < X2 and Y1 < Y2 are needed in box=")
        else:
            raise ValueError(f"--object {spec!r}: {item!r} is not point=X,Y, negative=X,Y or box=X1,Y1,X2,Y2 (one "
                             "box per object)")
    if not (pos or box):
        raise ValueError(f"--object {spec!r} has no positive point or box")
    return Prompt(pos + neg, [1] * len(pos) + [0] * len(neg), box)


def _prompts(a, size: tuple[int, int], xy) -> list[Prompt]:
    specs = [" ".join([f"point={p}" for p in a.point] + [f"negative={n}" for n in a.negative]
                      + ([f"box={a.box}"] if a.box else []))] if (a.point or a.negative or a.box) else []
    specs += a.object
    if not specs:
        raise ValueError("give a prompt: --point X,Y or --box X1,Y1,X2,Y2 (object 1), --object 'box=…' (more)")
    return [parse_object(s, size, xy) for s in specs]


def _checked(a):
    from .clips import read_frames
    from .predict import _run_dir, _xy
    run = _run_dir(a)
    if a.format != "cache":
        raise ValueError("--video runs the tree's cache files (and its ONNX video encoder); drop --format nunchaku")
    if a.frame < 0 or (a.max_frames is not None and a.max_frames < 1):
        raise ValueError("--frame must be ≥ 0 and --max-frames ≥ 1")
    out = Path(a.out or "video_masks")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "timing.json").is_file())):
        raise ValueError(f"--out {out} exists and was not written by predict --video; pass a new folder")
    src = read_frames(a.video)
    if src.count is not None and a.frame >= src.count:
        raise ValueError(f"--frame {a.frame}: {a.video} has {src.count} frames (0 … {src.count - 1})")
    return run, out, src, _prompts(a, src.size, _xy)


def main(a) -> int:
    """The --video branch of ``predict.main`` (``a``: its parsed arguments)."""
    from ..config import load_config
    from .predict import BANNER, _precision, _runtime
    try:
        run, out, src, prompts = _checked(a)
        cfg = load_config(run / "config.yaml")
        runtime = _runtime(a, run, cfg.model.name, a.device or cfg.model.device)
        precision = _precision(run, cfg) if runtime != "fake" else "auto"
        result = _track(a, run, out, src, prompts, cfg, runtime, precision)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    n, enc, rest = result
    print(f"{out}: {n} frames, {len(prompts)} objects; encoder {1000 * enc:.0f} ms/frame, decoders + memory "
          f"{1000 * rest:.0f} ms/frame ({runtime}); masks in {out / 'masks'}, overlay {out / 'overlay.mp4'}"
          + (f" ({BANNER})" if cfg.model.random_init else ""))
    return 0


def _track(a, run: Path, out: Path, src, prompts: list[Prompt], cfg, runtime: str, precision: str):
    """Track and write ``out`` atomically; returns (frames, median encoder s, median per-object part s; the
    medians leave the prompt frame out)."""
    import torch
    from tqdm import tqdm

    from ..files import atomic_dir
    from ..sam2.video import ObjectPrompt, median_times, track
    from .predict import _model_cache
    from .video import OverlayWriter, tint, video_model, write_masks
    device = a.device or cfg.model.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("the run was quantized for cuda but no CUDA device is available; add --device cpu")
    try:
        model = video_model(run, runtime, precision, _model_cache(cfg) if runtime == "openvino" else None)
    except (OSError, RuntimeError) as e:
        raise ValueError(str(e).splitlines()[0]) from None
    model = model.to(device)  # a graph runtime's encoder takes and gives CPU arrays whatever the device
    size = model.config.image_size
    w, h = src.size
    arrays = [p.arrays(w, h, size) for p in prompts]  # ([1, P, 2], [1, P]) each
    objs = [ObjectPrompt(k + 1, xy[0], lab[0]) for k, (xy, lab) in enumerate(arrays)]
    ids = [o.obj_id for o in objs]
    title = ("RANDOM WEIGHTS - " if cfg.model.random_init else "") + f"{cfg.model.name} quantized ({runtime})"
    rows = []

    def build(d: Path) -> None:
        (d / "masks").mkdir()
        writer = OverlayWriter(d / "overlay.mp4", src.fps, src.size)
        limit = None if a.max_frames is None else a.frame + a.max_frames
        total = min(x for x in (src.count, limit) if x is not None) if (src.count or limit) else None
        bar = tqdm(total=None if total is None else total - a.frame, desc="tracking", unit="frame", leave=False,
                   dynamic_ncols=True)
        shown = {}

        def kept(frames):  # the tracker consumes each frame before it yields its masks: keep it for the overlay
            for i, f in enumerate(frames):
                if i >= a.frame:
                    shown[i] = f
                yield f
        try:
            for tf in track(model, kept(src.frames(limit)), objs, a.frame):
                masks = tf.masks.cpu().numpy()
                write_masks(d / "masks", tf.index, masks, ids)
                writer.add(tint(shown.pop(tf.index), masks, ids, title))
                rows.append({**tf.timing(), "area": [float(m.mean()) for m in masks]})
                bar.update(1)
        except BaseException:
            bar.close()
            with contextlib.suppress(Exception):  # the tracking error is the one to report; a container never
                writer.close()                    # started may not close cleanly (the temp folder goes anyway)
            raise
        bar.close()
        writer.close()
        (d / "timing.json").write_text(json.dumps({"runtime": runtime, "objects": ids, "prompt_frame": a.frame,
                                                   "random_weights": cfg.model.random_init, "frames": rows},
                                                  indent=1))
    atomic_dir(out.resolve(), build)
    med = median_times(rows)
    return len(rows), med["encoder_s"], med["per_object_s"]
