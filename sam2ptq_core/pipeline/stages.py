"""Every cached stage, declared once: name, version, config slice, upstream stages and typed artifact.

A stage's key is sha256 over (name, version, its config slice, any extra key material the task adds, and the keys
of its upstream stages), so a change invalidates exactly the stages that depend on it. ``run_stage`` consumes a
declaration: it keys the stage, reuses the finished artifact or builds it in the store, and returns a ``Ref``.
Bump ``version`` when a stage's algorithm changes its output: its key and every downstream key change.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ..config import RunConfig
from . import artifacts as A
from .progress import run_logger
from .store import StageError, StageStore, stage_key

__all__ = ["Stage", "STAGES", "StageError", "Ref", "run_stage", "open_artifact", "stage_errors", "store_of",
           "local_dir"]


class Ref(TypedDict):
    """What tasks pass to each other: a finished stage in the store, whether it was reused and how long it took."""
    stage: str
    key: str
    dir: str
    reused: bool
    seconds: float


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    upstream: tuple[str, ...]                 # the stages whose artifacts it reads
    config_slice: Callable[[RunConfig], dict]  # the part of the config its result depends on
    artifact: type[A.Artifact]
    summary: str


def _dump(m, **kw) -> dict | None:
    return None if m is None else m.model_dump(mode="json", **kw)


def _fetch_slice(c: RunConfig) -> dict:
    return {"model": _dump(c.model, exclude={"device", "dtype"}), "seed": c.seed}


def _calib_slice(c: RunConfig) -> dict:
    return {"calib": _dump(c.quant.calib, include={"path", "num_samples", "image_size"}), "seed": c.seed}


def _capture_slice(c: RunConfig) -> dict:
    q = c.quant
    return {"device": c.model.device, "dtype": c.model.dtype, "batch_size": q.calib.batch_size,
            "sample_tokens": q.calib.sample_tokens, "skip": q.skip, "seed": c.seed}


def _rotate_slice(c: RunConfig) -> dict:
    return {"rotation": _dump(c.quant.rotation), "seed": c.seed}


def _smooth_slice(c: RunConfig) -> dict:
    q = c.quant  # one-shot: the smoothing objective uses RTN + the branch, so GPTQ settings do not change it
    sl = {"smooth": _dump(q.smooth), "wgts": _dump(q.wgts, exclude={"kernel_gptq"}), "ipts": _dump(q.ipts),
          "rotation": _dump(q.rotation), "seed": c.seed}
    if q.calib.mode == "sequential":  # later blocks see the quantized output of earlier ones: everything counts
        sl.update(mode="sequential", wgts=_dump(q.wgts), device=c.model.device, dtype=c.model.dtype,
                  batch_size=q.calib.batch_size, sample_tokens=q.calib.sample_tokens, skip=q.skip)
        if q.mixed is not None:  # the walk quantizes the fallback layers at their own format
            sl.update(mixed={"fallback": q.mixed.fallback, "layers": q.mixed.layers})
    return sl


def _gptq_slice(c: RunConfig) -> dict:
    return {"wgts": _dump(c.quant.wgts), "seed": c.seed, "mode": c.quant.calib.mode}


def _sensitivity_slice(c: RunConfig) -> dict:
    m = c.quant.mixed  # without mixed precision the stage records nothing and needs nothing
    return {"num_images": m.num_images, "device": c.model.device, "dtype": c.model.dtype, "ipts": _dump(c.quant.ipts),
            "seed": c.seed} if m else {"mixed": None}


def _mixed_slice(c: RunConfig) -> dict:
    m = c.quant.mixed
    return {"mixed": _dump(m, exclude={"num_images"}), "wgts": _dump(c.quant.wgts), "seed": c.seed} if m else {
        "mixed": None}


def _ranges_slice(c: RunConfig) -> dict:
    q = c.quant  # needed by static activations (the pipeline's own format) or by the ONNX export
    if not (q.ipts.static or c.onnx):
        return {"static": None}
    return {"method": q.ipts.static_method, "num_images": q.ipts.static_images, "device": c.model.device,
            "seed": c.seed, **({"attention": True} if q.ipts.attention else {})}  # (older keys stay valid)


def _onnx_slice(c: RunConfig) -> dict:
    return {"onnx": True, "seed": c.seed} if c.onnx else {}  # the file: the recipe (upstream keys) only


def _onnx_runtime_slice(c: RunConfig) -> dict:
    # + onnx_export.runtime_key: the resolved runtime, its version, the machine (the task's key_extra)
    return {"onnx": _dump(c.onnx), "seed": c.seed} if c.onnx else {"onnx": None}


def _evaluate_slice(c: RunConfig) -> dict:
    q = c.quant
    return {"ipts": _dump(q.ipts),
            "eval": _dump(q.eval, exclude={"regression_threshold", "regression_across_models", "video"}),
            "device": c.model.device, "dtype": c.model.dtype, "image_size": q.calib.image_size, "seed": c.seed}


def _video_slice(c: RunConfig) -> dict:
    # + the clip's content digest (the task's key_extra)
    q = c.quant
    if q.eval.video is None:
        return {"video": None}
    return {"video": _dump(q.eval.video), "static": q.ipts.static, "device": c.model.device, "dtype": c.model.dtype,
            "image_size": q.calib.image_size, "seed": c.seed}


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("fetch_model", 1, (), _fetch_slice, A.FetchedModel,
          "resolve the checkpoint (hub id + revision, local dir, HF cache) or the seeded random model"),
    Stage("build_calibration_set", 2, (), _calib_slice, A.CalibrationSet,
          "choose the calibration images and store them resized as uint8"),
    Stage("capture_activations", 2, ("fetch_model", "build_calibration_set"), _capture_slice, A.ActivationStats,
          "run the float encoder and keep per-layer input statistics"),
    Stage("rotate", 1, ("capture_activations",), _rotate_slice, A.RotationSpec,
          "the Hadamard rotation of every quantized input width"),
    Stage("smooth", 8, ("fetch_model", "build_calibration_set", "capture_activations", "rotate"), _smooth_slice,
          A.SmoothingChoice, "per-layer smoothing scales and the per-layer rotation choice (sequential mode: "
          "the whole block-by-block calibration, one seq_block stage per block)"),
    Stage("seq_block", 4, ("fetch_model", "build_calibration_set", "rotate"), _smooth_slice, A.BlockQuant,
          "sequential mode: one trunk block smoothed and quantized on the quantized earlier blocks' outputs"),
    Stage("gptq_lowrank", 6, ("fetch_model", "capture_activations", "rotate", "smooth"), _gptq_slice,
          A.QuantizedLayers, "low-rank branch + GPTQ (or RTN) of every trunk linear, per-layer errors"),
    Stage("sensitivity", 2, ("fetch_model", "build_calibration_set", "smooth", "gptq_lowrank"), _sensitivity_slice,
          A.Sensitivity, "quant.mixed: each layer alone at the target precision, its effect on its block's output "
          "and on the image embedding"),
    Stage("mixed", 6, ("fetch_model", "capture_activations", "rotate", "smooth", "gptq_lowrank", "sensitivity"),
          _mixed_slice, A.MixedChoice, "quant.mixed: the layers that fall back (budget policy) and their w8a8 "
          "re-quantization"),
    Stage("static_ranges", 2, ("fetch_model", "build_calibration_set", "smooth", "gptq_lowrank", "mixed"),
          _ranges_slice, A.StaticRanges, "static per-tensor activation ranges observed on the quantized model "
          "(quant.ipts.static, onnx)"),
    Stage("onnx_export", 8, ("fetch_model", "build_calibration_set", "smooth", "gptq_lowrank", "mixed",
                             "static_ranges"), _onnx_slice, A.OnnxExport,
          "onnx: the quantized encoder as int8 QDQ ONNX (and the float encoder), whatever runs it"),
    Stage("evaluate", 12, ("fetch_model", "build_calibration_set", "smooth", "gptq_lowrank", "mixed", "static_ranges"),
          _evaluate_slice, A.Evaluation, "float vs quantized SAM2 on held-out images: SQNR, mask IoU, report"),
    Stage("evaluate_video", 2, ("fetch_model", "build_calibration_set", "smooth", "gptq_lowrank", "mixed",
                                "static_ranges"), _video_slice, A.VideoEvaluation,
          "quant.eval.video: the quantized encoder in SAM2's video predictor on a clip, J&F against the float "
          "tracker per object and frame, per-frame time"),
    Stage("onnx_runtime", 1, ("fetch_model", "build_calibration_set", "smooth", "gptq_lowrank", "mixed",
                              "static_ranges", "onnx_export", "evaluate"), _onnx_runtime_slice, A.OnnxRuntime,
          "onnx: the file on this machine's graph runtime: SQNR, latency against torch, held-out masks"),
]}


def local_dir(cfg: RunConfig) -> Path:
    """Where this process keeps local state: the stage store itself for a local root, else ``cache.local``."""
    from .object_store import is_url
    if not is_url(cfg.cache.root):
        return Path(cfg.cache.root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cfg.cache.local or os.path.join(base, "sam2ptq")).expanduser()


def store_of(cfg: RunConfig):
    """The stage store of ``cache.root``: a local directory (flock, atomic rename) or an fsspec URL (object store)."""
    from .object_store import ObjectStageStore, is_url
    if is_url(cfg.cache.root):
        from .leases import prefect_api_configured, stage_lease
        lease = None
        if prefect_api_configured():
            def lease(stage: str, key: str):
                return stage_lease(stage, key, cfg.cache.lease_seconds)
        return ObjectStageStore(cfg.cache.root, local_dir(cfg), int(cfg.cache.local_max_gb * 2**30), lease,
                                timeout=cfg.cache.io_timeout_seconds)
    return StageStore(cfg.cache.root)


@contextmanager
def stage_errors(stage: str):
    """Re-raise any failure as StageError naming the stage (finished stages stay in the store)."""
    try:
        yield
    except StageError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StageError(f"stage {stage} failed: {msg}") from e


def open_artifact(cfg: RunConfig, ref: Ref):
    """The artifact of a finished stage (its declared artifact class): its files listed at their sizes, each
    sha256-checked when first read (``Manifest.path``)."""
    m = store_of(cfg).get(ref["stage"], ref["key"])
    if m is None:
        raise StageError(f"stage {ref['stage']} artifact {ref['key'][:12]} vanished from the store; rerun the flow")
    return STAGES[ref["stage"]].artifact(m)


def run_stage(stage: Stage, cfg: RunConfig, upstream: dict[str, Ref], build: Callable,
              key_extra: Callable[[], dict] | None = None) -> Ref:
    """Key ``stage`` (its config slice + ``key_extra()`` + the upstream keys), reuse it or ``build(tmp_dir)`` it in
    the store, log "reused"/"built", and return its Ref. ``build`` returns the manifest's ``meta`` dict. Every
    failure is a StageError naming the stage."""
    if set(upstream) != set(stage.upstream):
        raise TypeError(f"{stage.name} reads {sorted(stage.upstream)}, got refs for {sorted(upstream)}")
    t0 = time.time()
    with stage_errors(stage.name):
        sl = stage.config_slice(cfg)
        keys = {n: upstream[n]["key"] for n in stage.upstream}
        key = stage_key(stage.name, stage.version, {**sl, **(key_extra() if key_extra else {})}, keys)
        m, reused = store_of(cfg).run(stage.name, key, sl, keys, build)
    seconds = round(time.time() - t0, 2)
    if reused:
        run_logger().info("reused %s %s", stage.name, m.key[:12])
    else:
        run_logger().info("built %s %s in %.1f s", stage.name, m.key[:12], seconds)
    return Ref(stage=stage.name, key=m.key, dir=str(m.dir), reused=reused, seconds=seconds)
