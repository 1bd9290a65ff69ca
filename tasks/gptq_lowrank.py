"""Stage gptq_lowrank: low-rank branch + GPTQ (or RTN) of every trunk linear in the smoothed, rotated coordinates."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.pipeline.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["gptq_lowrank"]


@task(name=STAGE.name, cache_policy=NO_CACHE)
def gptq_lowrank(cfg: dict, model_ref: Ref, acts_ref: Ref, rot_ref: Ref, smooth_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "capture_activations": acts_ref, "rotate": rot_ref, "smooth": smooth_ref}

    def build(tmp):
        if c.quant.calib.mode == "sequential":  # done block by block in the smooth stage: gather the blocks
            from sam2ptq_core.pipeline.sequential import assemble_layers
            qlayers, report = assemble_layers(c, open_artifact(c, smooth_ref).meta["blocks"])
            STAGE.artifact.write(tmp, qlayers, report)
            return {"num_layers": len(qlayers), "gptq_fallbacks": len(report["fallbacks"]), "mode": "sequential"}
        from sam2ptq_core.algorithms.model_recipe import all_layer_errors, layer_rotations, quantize_all, saved_layers
        from sam2ptq_core.pipeline.runtime import device_of, layer_groups, layer_specs, load_layer_inputs
        li = load_layer_inputs(c, *(open_artifact(c, r) for r in (model_ref, acts_ref, rot_ref)))
        sm = open_artifact(c, smooth_ref)
        scales, chosen = sm.scales(), set(sm.rotation_choice()["layers"])
        rots = layer_rotations(li.layers, li.by_width, {k: k in chosen for k in li.layers})
        spec, dev = layer_specs(c.quant, c.seed, li.layers), device_of(c)
        with Progress(STAGE.name, len(li.layers), "layer") as prog:
            lqs = quantize_all(li.layers, li.stats, scales, rots, spec, prog, device=dev,
                               groups=layer_groups(c.quant, li.layers))
        fallbacks = {k: lq.fallback for k, lq in lqs.items() if lq.fallback}
        for k, msg in fallbacks.items():
            run_logger().warning("%s: %s", k, msg)
        rows = all_layer_errors(li.layers, li.stats, lqs, scales, rots, spec, device=dev)
        STAGE.artifact.write(tmp, saved_layers(lqs, li.layers, spec), {"layers": rows, "fallbacks": fallbacks})
        return {"num_layers": len(lqs), "gptq_fallbacks": len(fallbacks)}
    return run_stage(STAGE, c, refs, build)
