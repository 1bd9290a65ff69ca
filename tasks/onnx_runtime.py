"""Stage onnx_runtime (``onnx``): onnx_export's file run on this machine's graph runtime: SQNR against torch,
latency against the float encoder on the same runtime and torch fp32, masks on the held-out images evaluate drew.
Keyed by the ``onnx`` settings, the runtime ``auto`` resolves to, its version and the machine, so a shared store
never serves another machine's or runtime's numbers, and changing them re-measures without re-evaluating."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["onnx_runtime"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def onnx_runtime(cfg: dict, model_ref: Ref, calib_ref: Ref, smooth_ref: Ref, gptq_ref: Ref, mixed_ref: Ref,
                 ranges_ref: Ref, onnx_ref: Ref, eval_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref, "mixed": mixed_ref, "static_ranges": ranges_ref, "onnx_export": onnx_ref,
            "evaluate": eval_ref}

    def build(tmp):
        if c.onnx is None:
            STAGE.artifact.write(tmp, {"enabled": False})
            return {"enabled": False}
        from sam2ptq_core.pipeline.onnx_export import measure_encoder
        with Progress(STAGE.name, 4, "step") as prog:
            info = measure_encoder(c, {k: open_artifact(c, r) for k, r in refs.items()}, prog)
        STAGE.artifact.write(tmp, info)
        run_logger().info("onnx: on %s (%s) the quantized encoder runs %.2f× as fast as the float one (%.2f× torch "
                          "fp32)", info["runtime"], info["machine"], info["speedup_vs_float_runtime"],
                          info["speedup_vs_torch_fp32"])
        return {"enabled": True, "runtime": info["runtime"], "machine": info["machine"],
                "speedup_vs_float_runtime": round(info["speedup_vs_float_runtime"], 3)}

    def key_extra():
        from sam2ptq_core.pipeline.onnx_export import runtime_key
        return runtime_key(c) if c.onnx is not None else {}
    return run_stage(STAGE, c, refs, build, key_extra)
