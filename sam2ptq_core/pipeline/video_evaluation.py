"""The evaluate_video stage's work: the run's quantized encoder inside SAM2's video predictor on
``quant.eval.video``'s clip, scored against the float tracker (DAVIS's J&F per object and frame) and timed per frame
(encoder, and the rest: decoders and memory of every object). The memory modules come from the checkpoint, or are
seeded random for a random-weights run (``sam2/video.py::build_video_model``)."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..sam2.video import ObjectPrompt, build_video_model, jf_scores, median_times, track
from . import artifacts as A
from .evaluation import quantized_model
from .stage_inputs import load_fp_model, to_run_dtype

__all__ = ["clip_prompts", "run_video_evaluation"]


def clip_prompts(c: RunConfig):
    """(VideoSource, [Prompt]) of ``quant.eval.video``: the clip opened, each object's spec parsed and checked
    against the frame size (``predict --object``'s syntax); ValueError with one line naming the key otherwise."""
    from ..export.clips import read_frames
    from ..export.predict import _xy
    from ..export.predict_video import parse_object
    v = c.quant.eval.video
    try:
        src = read_frames(v.clip)
        prompts = [parse_object(s, src.size, _xy) for s in v.objects]
    except ValueError as e:
        raise ValueError(f"quant.eval.video: {str(e).splitlines()[0].replace('--video ', 'clip ')}") from None
    if src.count is not None and v.prompt_frame >= src.count:
        raise ValueError(f"quant.eval.video.prompt_frame {v.prompt_frame}: {v.clip} has {src.count} frames")
    return src, prompts


def _tracked(model, src, prompts, start: int, n: int, size: int, progress, done: int, label: str):
    w, h = src.size
    objs = [ObjectPrompt(k + 1, xy[0], lab[0]) for k, (xy, lab) in
            enumerate(p.arrays(w, h, size) for p in prompts)]
    out = []
    for f in track(model, src.frames(start + n), objs, start):
        out.append(f)
        if progress is not None:
            progress(done + len(out), what=f"{label} frame {f.index}")
    return out


def run_video_evaluation(c: RunConfig, fetched: A.FetchedModel, smooth: A.SmoothingChoice, gptq: A.QuantizedLayers,
                         mixed: A.MixedChoice, ranges: A.StaticRanges, progress=None) -> tuple[dict, dict]:
    """(metrics, strip): the J&F of the quantized tracker against the float one and both trackers' per-frame
    times; ``strip``: the frames, both trackers' masks and the object ids, for the report's pictures."""
    v = c.quant.eval.video
    src, prompts = clip_prompts(c)
    fp = load_fp_model(c, fetched)
    qm = quantized_model(c, fp.model, smooth, A.shipped_layers(gptq, mixed), ranges)
    ckpt = None if fp.random_weights else Path(fetched.meta["path"])
    size = c.quant.calib.image_size
    runs = {}
    for name, image_model in (("float", fp.model), ("quantized", qm)):
        video = to_run_dtype(build_video_model(image_model, checkpoint=ckpt, seed=c.seed), c)
        runs[name] = _tracked(video, src, prompts, v.prompt_frame, v.num_frames, size, progress,
                              sum(len(r) for r in runs.values()), name)
    scores = jf_scores(runs["float"], runs["quantized"])

    def times(t):
        rows = [f.timing() for f in t]
        return {**median_times(rows), "frames": rows}
    metrics = {"random_weights": fp.random_weights, "enabled": True, "clip": v.clip, "clip_size": list(src.size),
               "objects": list(v.objects), "prompt_frame": v.prompt_frame, "frames": [f.index for f in runs["float"]],
               **scores, "float": times(runs["float"]), "quantized": times(runs["quantized"])}
    keep = sorted({round(i * (len(runs["float"]) - 1) / max(v.strip_frames - 1, 1))
                   for i in range(v.strip_frames)})
    shown = [im for i, im in enumerate(src.frames(v.prompt_frame + v.num_frames)) if i - v.prompt_frame in keep]
    strip = {"frames": shown, "index": [runs["float"][k].index for k in keep],
             "float": [runs["float"][k].masks.numpy() for k in keep],
             "quantized": [runs["quantized"][k].masks.numpy() for k in keep]}
    return metrics, strip
