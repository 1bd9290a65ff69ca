"""Sequential calibration (``quant.calib.mode: sequential``): trunk block i is smoothed and quantized on the inputs
that the already quantized blocks 0..i-1 produce, as GPTQ's own code and the sequential pipelines of LLM tools do.
The walk itself (hidden states on local disk, memory flat in the number of images) is ``sam2/sequential.py``; the
per-block recipe is ``algorithms/model_recipe.py::quantize_block``; this module makes each block a stage.

Resume: every block is a stage of its own (``seq_block``), keyed by its index and by the key of the block before it.
A killed run resumes at the first block without a stage. The hidden states are rebuilt then by running the images
through the stored quantized blocks (one forward per block, no search); a fully reused run runs no forward at all.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from ..files import sweep_leftovers, writer_tag

_log = logging.getLogger(__name__)

__all__ = ["run_blocks", "assemble_smoothing", "assemble_layers"]


def run_blocks(c, refs: dict, progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Every trunk block as a ``seq_block`` stage (reused where stored, built in order otherwise); returns the
    blocks' Refs. ``refs``: fetch_model, build_calibration_set and rotate."""
    from ..algorithms.model_recipe import quantize_block
    from ..algorithms.smoothing import smooth_candidates
    from ..sam2.images import normalize
    from ..sam2.loading import quantizable_linears, trunk
    from ..sam2.sequential import SequentialCalibrator
    from ..schemes import calibration_schemes, layer_groups, layer_specs
    from .stage_inputs import layer_rots, load_fp_model, to_run_dtype
    from .stages import STAGES, local_dir, open_artifact, run_stage

    stage = STAGES["seq_block"]
    q = c.quant
    model = to_run_dtype(load_fp_model(c, open_artifact(c, refs["fetch_model"])).model, c)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    images = open_artifact(c, refs["build_calibration_set"]).images()
    bs = q.calib.batch_size

    def pixels():
        for i in range(0, images.shape[0], bs):
            yield normalize(images[i:i + bs]).to(dev, dt)
    proj, rot = (q.smooth.proj if q.smooth else None), q.rotation
    # formats fixed before calibration, mixed precision's fallbacks included (quant.mixed.layers)
    schemes = calibration_schemes(q, quantizable_linears(model, q.skip))
    cands = smooth_candidates(proj.strategy, proj.alpha, proj.beta, proj.num_grids) if proj else [(0.0, 0.0)]
    by_width = open_artifact(c, refs["rotate"]).matrices()
    rotation = {"random": bool(rot and rot.random), "seed": c.seed}
    tmp_root = local_dir(c) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    for gone in sweep_leftovers(tmp_root):  # hidden states of a killed run of this machine (GBs for large)
        _log.info("removed %s, left by a sequential run that was killed", gone)
    work = tmp_root / f".sequential.tmp-{writer_tag()}"  # named by its writer, so the next run can sweep it
    work.mkdir()
    cal = SequentialCalibrator(model, pixels, work, q.calib.sample_tokens, c.seed, q.skip, schemes)
    out, previous, n = [], None, len(trunk(model).blocks)
    upstream = {k: refs[k] for k in stage.upstream}
    try:
        for i in range(n):
            # float (fp16 fallback) layers are not quantized: the walk runs them in float
            layers = {k: v for k, v in quantizable_linears(model, q.skip).items()
                      if k.split(".")[1] == str(i) and schemes[k].quantized}
            fb = {k for k in layers if schemes[k].fallback}

            def build(tmp, i=i, layers=layers, previous=previous, fb=fb):
                sch = {k: schemes[k] for k in layers}
                r = quantize_block(layers, cal.stats(i), layer_rots(layers, by_width, sch), layer_specs(q, c.seed, sch),
                                   cands, proj is not None, bool(rot and rot.mode == "auto"), dev,
                                   [g for g in layer_groups(q, layers) if not set(g) & fb])
                stage.artifact.write(tmp, {"smooth": r["smooth"], "qlayers": r["qlayers"]},
                                     {"block": i, **{k: r[k] for k in ("rotated", "log", "layers", "fallbacks")}})
                return {"block": i, "num_layers": len(layers), "previous": previous}
            ref = run_stage(stage, c, upstream, build, key_extra=lambda i=i, p=previous: {"block": i, "previous": p})
            art = open_artifact(c, ref)
            t, info = art.tensors(), art.info()
            cal.quantized(i, t["qlayers"], t["smooth"], {**rotation, "layers": info["rotated"]})
            out.append(ref)
            previous = ref["key"]
            if progress:
                progress(i + 1, n, f"block {i}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _blocks(c, keys: list[str]):
    from .stages import open_artifact
    return [open_artifact(c, {"stage": "seq_block", "key": k}) for k in keys]


def assemble_smoothing(c, keys: list[str]) -> tuple[dict, list[str], dict]:
    """The smooth stage's (scales, rotated layers, search log) from the blocks' stages."""
    scales, rotated, log = {}, [], {}
    for art in _blocks(c, keys):
        info = art.info()
        scales.update(art.tensors()["smooth"])
        rotated += info["rotated"]
        log.update(info["log"])
    return scales, rotated, log


def assemble_layers(c, keys: list[str]) -> tuple[dict, dict]:
    """The GPTQ stage's (saved layers, {"layers": error rows, "fallbacks"}) from the blocks' stages."""
    qlayers, rows, fallbacks = {}, [], {}
    for art in _blocks(c, keys):
        info = art.info()
        qlayers.update(art.tensors()["qlayers"])
        rows += info["layers"]
        fallbacks.update(info["fallbacks"])
    return qlayers, {"layers": rows, "fallbacks": fallbacks}
