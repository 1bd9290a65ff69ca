"""Stage sensitivity (quant.mixed): each quantized layer alone at the target precision — its block's output error
and the image embedding's SQNR on a few calibration images."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["sensitivity"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def sensitivity(cfg: dict, model_ref: Ref, calib_ref: Ref, smooth_ref: Ref, gptq_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref}

    def build(tmp):
        from sam2ptq_core.pipeline.mixed import measure_sensitivity
        with Progress(STAGE.name, 1, "layer") as prog:
            res = measure_sensitivity(c, {k: open_artifact(c, r) for k, r in refs.items()}, prog)
        STAGE.artifact.write(tmp, res)
        return {"num_layers": len(res["layers"]), "images": res["images"]}
    return run_stage(STAGE, c, refs, build)
