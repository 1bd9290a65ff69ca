"""Stage onnx_export (``onnx``): the quantized encoder as an int8 QDQ ONNX file traced from QuantLinear's forward,
run on a graph runtime and timed against the float encoder on the same runtime."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
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
        with Progress(STAGE.name, 5, "step") as prog:
            info = export_encoder(c, {k: open_artifact(c, r) for k, r in refs.items()}, tmp, prog)
        STAGE.artifact.write(tmp, {"enabled": True, **info})
        run_logger().info("onnx: on %s the quantized encoder runs %.2f× as fast as the float one (%.2f× torch fp32)",
                          info["runtime"], info["speedup_vs_float_runtime"], info["speedup_vs_torch_fp32"])
        return {"enabled": True, "runtime": info["runtime"],
                "speedup_vs_float_runtime": round(info["speedup_vs_float_runtime"], 3)}
    return run_stage(STAGE, c, refs, build)
