"""Stage gptq_lowrank: low-rank branch + GPTQ (or RTN) of every trunk linear in the smoothed, rotated coordinates."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["gptq_lowrank"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def gptq_lowrank(cfg: dict, model_ref: Ref, acts_ref: Ref, rot_ref: Ref, smooth_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "capture_activations": acts_ref, "rotate": rot_ref, "smooth": smooth_ref}

    def build(tmp):
        if c.quant.calib.mode == "sequential":  # done block by block in the smooth stage: gather the blocks
            from sam2ptq_core.pipeline.sequential import assemble_layers
            qlayers, report = assemble_layers(c, open_artifact(c, smooth_ref).meta["blocks"])
            STAGE.artifact.write(tmp, qlayers, report)
            return {"num_layers": len(qlayers), "gptq_fallbacks": len(report["fallbacks"]), "mode": "sequential"}
        from sam2ptq_core.algorithms.model_recipe import quantize_and_report
        from sam2ptq_core.pipeline import stage_inputs as rt
        from sam2ptq_core.schemes import layer_groups, layer_specs
        li = rt.load_layer_inputs(c, *(open_artifact(c, r) for r in (model_ref, acts_ref, rot_ref)))
        sm = open_artifact(c, smooth_ref)
        spec = layer_specs(c.quant, c.seed, li.schemes)
        with Progress(STAGE.name, len(li.layers), "layer") as prog:
            saved, rows, fallbacks = quantize_and_report(li.layers, li.stats, sm.scales(), rt.chosen_rotations(li, sm),
                                                         spec, prog, device=rt.device_of(c),
                                                         groups=layer_groups(c.quant, li.layers))
        for k, msg in fallbacks.items():
            run_logger().warning("%s: %s", k, msg)
        STAGE.artifact.write(tmp, saved, {"layers": rows, "fallbacks": fallbacks})
        return {"num_layers": len(saved), "gptq_fallbacks": len(fallbacks)}
    return run_stage(STAGE, c, refs, build)
