"""Stage onnx_export (``onnx``): the quantized encoder as an int8 QDQ ONNX file traced from QuantLinear's forward,
and the float encoder beside it; keyed by the recipe only (onnx_runtime runs and times them)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["onnx_export"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def onnx_export(cfg: dict, model_ref: Ref, calib_ref: Ref, smooth_ref: Ref, gptq_ref: Ref, mixed_ref: Ref,
                ranges_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref, "mixed": mixed_ref, "static_ranges": ranges_ref}

    def build(tmp):
        if c.onnx is None:
            STAGE.artifact.write(tmp, {"enabled": False})
            return {"enabled": False}
        from sam2ptq_core.pipeline.onnx_export import export_encoder
        with Progress(STAGE.name, 1, "step") as prog:
            prog(0, what="export")
            info = export_encoder(c, {k: open_artifact(c, r) for k, r in refs.items()}, tmp)
            prog(1, what="done")
        STAGE.artifact.write(tmp, {"enabled": True, **info})
        return {"enabled": True, "bytes": info["bytes"]}
    return run_stage(STAGE, c, refs, build)
