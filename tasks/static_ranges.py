"""Stage static_ranges (``quant.ipts.static`` or ``onnx``): static per-tensor activation ranges observed on the
quantized model."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["static_ranges"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def static_ranges(cfg: dict, model_ref: Ref, calib_ref: Ref, smooth_ref: Ref, gptq_ref: Ref, mixed_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref, "mixed": mixed_ref}

    def build(tmp):
        if not (c.quant.ipts.static or c.onnx):
            STAGE.artifact.write(tmp, {"enabled": False})
            return {"enabled": False}
        from sam2ptq_core.pipeline.static_ranges import observe_ranges
        with Progress(STAGE.name, c.quant.ipts.static_images, "image") as prog:
            info = observe_ranges(c, *(open_artifact(c, r) for r in refs.values()), prog)
        STAGE.artifact.write(tmp, info)
        run_logger().info("static ranges (%s) of %d layers from %d images", info["method"], len(info["layers"]),
                          info["images"])
        return {"enabled": True, "layers": len(info["layers"])}
    return run_stage(STAGE, c, refs, build)
