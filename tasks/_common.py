"""Shared plumbing of the stage tasks: config, store, model loading, progress reporting, stage errors."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sam2ptq_core.config import RunConfig, load_config
from sam2ptq_core.sam2 import DTYPES, load_model, weights_sha256
from sam2ptq_core.store import Manifest, StageStore

__all__ = ["StageError", "Ref", "cfg_of", "store_of", "run_logger", "Progress", "stage_errors", "load_fp_model",
           "device_of", "ref_of", "manifest_of", "finish", "to_run_dtype", "VERSIONS", "in_prefect_run", "preflight",
           "run_stage", "load_layer_inputs", "LayerInputs"]

# Bump a stage's version when its algorithm changes meaningfully: its key (and every downstream key) changes.
VERSIONS = {"fetch_model": 1, "build_calibration_set": 1, "capture_activations": 1, "smooth": 2, "rotate": 1,
            "gptq_lowrank": 1, "evaluate": 2}


class StageError(RuntimeError):
    """A stage failed; the message starts with the stage name."""


Ref = dict  # {"stage", "key", "dir", "reused"}: the small reference tasks pass to each other


def cfg_of(cfg: dict) -> RunConfig:
    return load_config(cfg)


def store_of(cfg: RunConfig) -> StageStore:
    return StageStore(cfg.cache.root)


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (artifacts and run loggers exist only there)."""
    from prefect.context import FlowRunContext, TaskRunContext
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger:
    if in_prefect_run():
        from prefect.logging import get_run_logger
        return get_run_logger()
    return logging.getLogger("sam2ptq")  # task.fn() in tests, or plain library use


class Progress:
    """Log lines + a Prefect progress artifact; a terminal bar when SAM2PTQ_PROGRESS_BAR=1 (the CLI sets it)."""

    def __init__(self, stage: str, total: int, unit: str = "step"):
        self.stage, self.total, self.unit = stage, max(total, 1), unit
        self.log = run_logger()
        self.artifact = None
        self.last_logged = -1.0
        self.bar = None
        if os.environ.get("SAM2PTQ_PROGRESS_BAR") == "1":
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=f"{stage:>22}", unit=unit, leave=True, dynamic_ncols=True)
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact
            self.artifact = create_progress_artifact(0.0, description=f"{stage}: 0/{self.total} {unit}s")

    def __call__(self, done: int, total: int | None = None, what: str = "") -> None:
        frac = done / (total or self.total)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if what:
                self.bar.set_postfix_str(what, refresh=False)
        if frac - self.last_logged >= 0.1 or done == (total or self.total):
            self.last_logged = frac
            self.log.info("%s: %d/%d %ss %s", self.stage, done, total or self.total, self.unit, what)
            if self.artifact is not None:
                from prefect.artifacts import update_progress_artifact
                update_progress_artifact(self.artifact, 100 * frac,
                                         description=f"{self.stage}: {done}/{total or self.total} {self.unit}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def ref_of(m: Manifest, reused: bool) -> Ref:
    return {"stage": m.stage, "key": m.key, "dir": str(m.dir), "reused": reused}


def manifest_of(store: StageStore, ref: Ref) -> Manifest:
    m = store.get(ref["stage"], ref["key"])
    if m is None:
        raise StageError(f"stage {ref['stage']} artifact {ref['key'][:12]} vanished from the store; rerun the flow")
    return m


def finish(stage: str, m: Manifest, reused: bool, t0: float) -> Ref:
    log = run_logger()
    if reused:
        log.info("reused %s %s", stage, m.key[:12])
    else:
        log.info("built %s %s in %.1f s", stage, m.key[:12], time.time() - t0)
    return ref_of(m, reused)


def run_stage(stage: str, c: RunConfig, upstream: dict[str, str], build, key_extra=None) -> Ref:
    """Key the stage (config slice + ``key_extra()`` + upstream keys), reuse it or ``build(tmp_dir)`` it in the
    store, log "reused"/"built", and return its reference. Every failure is a StageError naming the stage."""
    from sam2ptq_core.config import stage_slices
    from sam2ptq_core.store import stage_key
    t0 = time.time()
    with stage_errors(stage):
        sl = stage_slices(c)[stage]
        key = stage_key(stage, VERSIONS[stage], {**sl, **(key_extra() if key_extra else {})}, upstream)
        m, reused = store_of(c).run(stage, key, sl, upstream, build)
    return finish(stage, m, reused, t0)


@dataclass
class LayerInputs:
    """What the per-layer stages work on: the float model, its trunk linears, their statistics and each layer's
    candidate rotation (None where rotation is off)."""
    fp: "FPModel"
    layers: dict
    stats: dict
    rots: dict
    by_width: dict


def load_layer_inputs(c: RunConfig, model_ref: Ref, acts_ref: Ref, rot_ref: Ref) -> LayerInputs:
    import json

    from sam2ptq_core.recipe import layer_rotations, rotation_matrices
    from sam2ptq_core.sam2 import quantizable_linears
    from sam2ptq_core.stats import LayerStats
    store = store_of(c)
    fp = load_fp_model(c, manifest_of(store, model_ref))
    acts = torch.load(manifest_of(store, acts_ref).path("acts.pt"), weights_only=True)
    stats = {k: LayerStats.from_dict(v) for k, v in acts.items()}
    layers = {k: v for k, v in quantizable_linears(fp.model, c.quant.skip).items() if k in stats}
    by_width = rotation_matrices(json.loads(manifest_of(store, rot_ref).path("rotation.json").read_text()))
    return LayerInputs(fp, layers, stats, layer_rotations(layers, by_width), by_width)


def device_of(cfg: RunConfig) -> torch.device:
    if cfg.model.device == "cuda" and not torch.cuda.is_available():
        raise StageError("model.device is cuda but no CUDA device is available; use --model.device cpu")
    return torch.device(cfg.model.device)


@dataclass
class FPModel:
    model: torch.nn.Module
    random_weights: bool
    source: str


def load_fp_model(cfg: RunConfig, fetch: Manifest) -> FPModel:
    """Rebuild/load the float model recorded by fetch_model and check it is bit-for-bit the same weights."""
    meta = fetch.meta
    lm = load_model(cfg.model.name, path=meta.get("path", ""), revision=cfg.model.revision,
                    random_init=cfg.model.random_init, seed=cfg.seed, image_size=cfg.quant.calib.image_size,
                    arch=cfg.model.arch)
    if weights_sha256(lm.model) != meta["weights_sha256"]:
        raise StageError("fetch_model: the model weights changed since they were fetched; clear the cache entry")
    return FPModel(lm.model, lm.random_weights, lm.source)


def to_run_dtype(model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    dt = DTYPES[cfg.model.dtype]
    if cfg.model.device == "cpu" and dt == torch.float16:
        run_logger().warning("model.dtype float16 on CPU runs in float32 (CPU float16 kernels are missing or slow); "
                             "use --model.dtype bfloat16 or float32 to silence this")
        dt = torch.float32
    return model.to(device=device_of(cfg), dtype=dt)


def preflight(cfg: RunConfig) -> None:
    """Cheap checks of the inputs before any work starts, each failing with one line that names the fix."""
    from pathlib import Path

    from sam2ptq_core.data import list_images
    list_images(cfg.quant.calib.path)
    if cfg.quant.eval.path:
        list_images(cfg.quant.eval.path)
    if cfg.quant.eval.annotations and not Path(cfg.quant.eval.annotations).is_file():
        raise StageError(f"quant.eval.annotations file {cfg.quant.eval.annotations} does not exist")
    if cfg.model.path and not (Path(cfg.model.path) / "config.json").is_file():
        raise StageError(f"model.path {cfg.model.path} is not a transformers SAM2 checkpoint (no config.json); "
                         f"point --model.path at a directory saved with save_pretrained")
    device_of(cfg)
    if cfg.convert_nunchaku:
        from sam2ptq_core.export.nunchaku import check_supported
        check_supported(cfg)
