"""Stage mixed (quant.mixed): the layers that fall back under the budget, re-quantized at w8a8 or left float."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["mixed"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def mixed(cfg: dict, model_ref: Ref, acts_ref: Ref, rot_ref: Ref, smooth_ref: Ref, gptq_ref: Ref,
          sens_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "capture_activations": acts_ref, "rotate": rot_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref, "sensitivity": sens_ref}

    def build(tmp):
        from sam2ptq_core.pipeline.mixed import choose_and_requantize
        with Progress(STAGE.name, 1, "layer") as prog:
            fallback, info, scheme = choose_and_requantize(c, {k: open_artifact(c, r) for k, r in refs.items()},
                                                           prog)
        STAGE.artifact.write(tmp, fallback, info, scheme)
        if info["fallback"]:
            run_logger().info("mixed precision: %d layers fall back to %s (average %.2f weight bits)",
                              len(info["layers"]), info["fallback"], info["avg_weight_bits"])
        return {"fallback": info["fallback"], "num_layers": len(info["layers"])}
    return run_stage(STAGE, c, refs, build)
