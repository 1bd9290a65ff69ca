"""SAM2's video predictor on a real clip with the float encoder and an output tree's quantized one, in torch and on
the graph runtimes, measured in one run: J&F of every tracker against the float torch tracker (per object and
frame), the encoder time per frame E and the rest of the frame (decoders, memory attention and memory encoder of
every object, ≈ M·n) with 1, 4 and 16 objects.

    python benchmarks/video_tracking.py --run outputs/sam2/demo_tiny_w4a8 [--clip FILE] [--frames 10]
        [--sweep-frames 4] [--runtimes onnxruntime,openvino] [--json benchmarks/results/video_tracking_cpu.json]
        [--out outputs/video_tracking]

The clip defaults to ``vtest.avi`` of Debian's opencv-doc package (pedestrians, 768×576, 10 fps), installed with
apt-get when it is missing and this process may. Overlay clips of each tracker go to ``--out`` (not in git)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
# vtest.avi, frame 0 (768×576): three pedestrians and the parked van (pixel boxes x1, y1, x2, y2)
NAMED_BOXES = {"walker left": (250, 218, 285, 310), "walker centre": (498, 155, 532, 235),
               "walker right": (638, 238, 688, 322), "van": (650, 42, 725, 100)}


def _clip(path: str | None) -> Path:
    if path:
        return Path(path)
    clip = OPENCV_DOC / "vtest.avi"
    if not clip.is_file() and shutil.which("apt-get") and os.geteuid() == 0:
        print("installing opencv-doc (its example clips) …", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "opencv-doc"], check=True, stdout=subprocess.DEVNULL)
    if not clip.is_file():
        sys.exit(f"error: {clip} is missing; install Debian's opencv-doc (apt-get install opencv-doc) or pass --clip")
    return clip


def _boxes(n: int, w: int, h: int) -> list[tuple[float, float, float, float]]:
    """The named boxes, then a grid of 80×80 boxes over the frame, up to ``n``."""
    boxes = list(NAMED_BOXES.values())
    grid = [(x, y, x + 80, y + 80) for y in range(40, h - 80, 120) for x in range(40, w - 80, 120)]
    return (boxes + grid)[:n]


def _prompts(n: int, size: int, w: int, h: int):
    from sam2ptq_core.export.onnx_predictor import Prompt
    from sam2ptq_core.sam2.video import ObjectPrompt
    out = []
    for k, box in enumerate(_boxes(n, w, h)):
        xy, lab = Prompt(box=box).arrays(w, h, size)
        out.append(ObjectPrompt(k + 1, xy[0], lab[0]))
    return out


def _float_video_file(run: Path, cfg, tmp: Path) -> Path:
    """The float encoder (the onnx_export stage's float.onnx, the runtime baseline) cut for the video path."""
    from sam2ptq_core.export.onnx_video import write_video_encoder
    from sam2ptq_core.pipeline.stages import open_artifact
    keys = json.loads((run / "stages.json").read_text())
    art = open_artifact(cfg, {"stage": "onnx_export", "key": keys["onnx_export"]["key"]})
    return write_video_encoder(art.float_file(), tmp / "float.video_encoder.onnx")


def _trackers(run: Path, runtimes: list[str], tmp: Path) -> dict:
    """name → Sam2VideoModel: float and quantized encoders, in torch and on each runtime (same precision)."""
    from sam2ptq_core.config import load_config
    from sam2ptq_core.export import runtimes as rts
    from sam2ptq_core.export.predict import _model_cache, _precision
    from sam2ptq_core.export.video import RuntimeVisionEncoder, float_video_model, video_model
    cfg = load_config(run / "config.yaml")
    precision = _precision(run, cfg)
    out = {"torch float": float_video_model(run), "torch quantized": video_model(run, "fake")}
    float_file = _float_video_file(run, cfg, tmp)
    for rt in runtimes:
        cache = _model_cache(cfg) if rt == "openvino" else None
        fp = float_video_model(run)
        fp.vision_encoder = RuntimeVisionEncoder(rts.open_runtime(float_file, rt, None, precision, cache),
                                                 out["torch float"].vision_encoder.neck.position_encoding)
        out[f"{rt} float"] = fp
        out[f"{rt} quantized"] = video_model(run, rt, precision, cache)
    return out


def _run(model, src, prompts, frames: int):
    from sam2ptq_core.sam2.video import track
    return list(track(model, src.frames(frames), prompts))


def _times(tracked) -> dict:
    """Median seconds per frame (``sam2/video.py::median_times``: the prompt frame left out)."""
    from sam2ptq_core.sam2.video import median_times
    med = median_times([f.timing() for f in tracked])
    return {"encoder_s": med["encoder_s"], "rest_s": med["per_object_s"]}


def _breakdown(model, src, prompts, frames: int) -> dict:
    """Seconds per frame (prompt frame left out) in each part of the per-object work: memory attention (and the
    share of it in its nn.Linear layers), memory encoder, prompt encoder + mask decoder, by forward hooks."""
    from sam2ptq_core.sam2.video import ForwardClock, track
    parts = {"memory_attention": model.memory_attention, "memory_encoder": model.memory_encoder,
             "mask_decoder": model.mask_decoder, "prompt_encoder": model.prompt_encoder}
    clocks = {k: ForwardClock(m) for k, m in parts.items()}
    linears = [ForwardClock(m) for m in model.memory_attention.modules() if isinstance(m, torch.nn.Linear)]
    sums = {k: 0.0 for k in [*parts, "memory_attention_linears", "frames"]}
    tracked = []
    try:
        for i, f in enumerate(track(model, src.frames(frames), prompts)):
            tracked.append(f)
            got = {k: c.take() for k, c in clocks.items()}
            lin = sum(c.take() for c in linears)
            if i == 0:
                continue
            for k, v in got.items():
                sums[k] += v
            sums["memory_attention_linears"] += lin
            sums["frames"] += 1
    finally:
        for c in [*clocks.values(), *linears]:
            c.close()
    n = max(sums.pop("frames"), 1)
    return {k: v / n for k, v in sums.items()}, tracked


def _overlay(path: Path, src, tracked, title: str) -> None:
    from sam2ptq_core.export.video import OverlayWriter, tint
    w = OverlayWriter(path, src.fps, src.size)
    ids = list(range(1, tracked[0].masks.shape[0] + 1))
    for im, f in zip(src.frames(len(tracked)), tracked):
        w.add(tint(im, f.masks.numpy(), ids, title))
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="outputs/sam2/demo_tiny_w4a8")
    ap.add_argument("--clip", default=None)
    ap.add_argument("--frames", type=int, default=8, help="frames of the J&F run (the three walkers)")
    ap.add_argument("--sweep-frames", type=int, default=5, help="frames of each 1-, 4- and 16-object run")
    ap.add_argument("--json", default="benchmarks/results/video_tracking_cpu.json")
    ap.add_argument("--out", default="outputs/video_tracking")
    ap.add_argument("--runtimes", default="onnxruntime",
                    help="graph runtimes to run the encoders on, comma-separated (openvino compiles each new 1024² "
                         "file for minutes on 2 cores)")
    a = ap.parse_args()
    from sam2ptq_core.config import load_config
    from sam2ptq_core.export.runtime_choice import machine
    from sam2ptq_core.export.runtimes import available_runtimes
    from sam2ptq_core.export.video import read_frames
    from sam2ptq_core.sam2.video import jf_scores
    torch.set_grad_enabled(False)
    run, clip = Path(a.run), _clip(a.clip)
    cfg = load_config(run / "config.yaml")
    src = read_frames(clip)
    banner = "RANDOM WEIGHTS — not a real SAM2 checkpoint" if cfg.model.random_init else cfg.model.name
    print(banner, flush=True)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wanted = [r for r in a.runtimes.split(",") if r]
        missing = [r for r in wanted if r not in available_runtimes()]
        if missing:
            sys.exit(f"error: --runtimes {','.join(missing)} is not installed here (pip install -e '.[onnx,openvino]')")
        trackers = _trackers(run, wanted, Path(tmp))
        size = cfg.quant.calib.image_size
        prompts3 = _prompts(3, size, *src.size)
        runs = {}
        for name, model in trackers.items():
            runs[name] = _run(model, src, prompts3, a.frames)
            print(f"{name}: {_times(runs[name])}", flush=True)
            _overlay(out_dir / f"{name.replace(' ', '_')}.mp4", src, runs[name], f"{banner[:14]} {name}")
        ref = runs["torch float"]
        rows = {name: {**_times(t), **({} if name == "torch float" else jf_scores(ref, t))}
                for name, t in runs.items()}
        deploy = next((f"{r} quantized" for r in wanted), "torch quantized")
        breakdown, tracked4 = _breakdown(trackers[deploy], src, _prompts(4, size, *src.size), a.sweep_frames)
        print(f"{deploy}, 4 objects, per frame: {breakdown}", flush=True)
        sweep = {4: _times(tracked4)}
        for n in (1, 16):
            sweep[n] = _times(_run(trackers[deploy], src, _prompts(n, size, *src.size), a.sweep_frames))
            print(f"{deploy}, {n} objects: {sweep[n]}", flush=True)
    e = statistics.median(s["encoder_s"] for s in sweep.values())
    m = float(np.polyfit([1, 4, 16], [sweep[n]["rest_s"] for n in (1, 4, 16)], 1)[0])
    result = {"first_line": banner, "random_weights": cfg.model.random_init, "run": str(run), "clip": str(clip),
              "clip_size": list(src.size), "frames": a.frames, "objects": list(NAMED_BOXES)[:3], "image_size": size,
              "date": datetime.date.today().isoformat(), "machine": machine(), "python": platform.python_version(),
              "torch": torch.__version__, "trackers": {k: {kk: vv for kk, vv in v.items() if kk not in ("J", "F")}
                                                      for k, v in rows.items()},
              "per_frame_jf": {k: {"J": v.get("J"), "F": v.get("F")} for k, v in rows.items() if "J" in v},
              "sweep_tracker": deploy, "sweep": {str(k): v for k, v in sorted(sweep.items())},
              "encoder_s": e, "per_object_s": m, "breakdown_4_objects": breakdown}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_frame_jf"}, indent=1))


if __name__ == "__main__":
    main()
