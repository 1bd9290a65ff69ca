"""Stage smooth: per-layer smoothing scales by grid search on the fully quantized layer's output error, and
(rotation mode auto) the per-layer choice of keeping the Hadamard rotation."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["smooth"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def smooth(cfg: dict, model_ref: Ref, calib_ref: Ref, acts_ref: Ref, rot_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "capture_activations": acts_ref,
            "rotate": rot_ref}

    def build(tmp):
        from sam2ptq_core.algorithms.model_recipe import search_all_smoothing, smoothing_record
        from sam2ptq_core.algorithms.smoothing import smooth_candidates
        from sam2ptq_core.pipeline.stage_inputs import device_of, load_layer_inputs
        from sam2ptq_core.schemes import layer_groups, layer_specs
        proj = c.quant.smooth.proj if c.quant.smooth else None
        rot = c.quant.rotation
        choice = {"random": bool(rot and rot.random), "seed": c.seed, "layers": []}
        if c.quant.calib.mode == "sequential":  # each block its own seq_block stage: a killed run resumes there
            from sam2ptq_core.pipeline.sequential import assemble_smoothing, run_blocks
            with Progress(STAGE.name, 1, "block") as prog:
                keys = [r["key"] for r in run_blocks(c, refs, prog)]
            scales, choice["layers"], log = assemble_smoothing(c, keys)
            STAGE.artifact.write(tmp, scales if proj else {}, choice, log)
            return {"enabled": proj is not None, "mode": "sequential", "blocks": keys,
                    "rotated_layers": len(choice["layers"])}
        if proj is None and rot is None:
            STAGE.artifact.write(tmp, {}, choice, {})
            return {"enabled": False}
        li = load_layer_inputs(c, *(open_artifact(c, refs[k]) for k in ("fetch_model", "capture_activations",
                                                                          "rotate")))
        # without smoothing only the identity (0, 0) is tried: the search then just decides the rotation
        cands = smooth_candidates(proj.strategy, proj.alpha, proj.beta, proj.num_grids) if proj else [(0.0, 0.0)]
        with Progress(STAGE.name, len(li.layers), "layer") as prog:
            res = search_all_smoothing(li.layers, li.stats, li.rots, layer_specs(c.quant, c.seed, li.schemes), cands,
                                       auto_rotate=bool(rot and rot.mode == "auto"), progress=prog,
                                       device=device_of(c), groups=layer_groups(c.quant, li.layers))
        scales, choice["layers"], log = smoothing_record(res)
        STAGE.artifact.write(tmp, scales if proj else {}, choice, log)
        return {"enabled": proj is not None, "num_candidates": len(cands), "rotated_layers": len(choice["layers"])}
    return run_stage(STAGE, c, refs, build)
