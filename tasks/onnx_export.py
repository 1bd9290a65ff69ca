"""Stage onnx_export (``onnx``): the quantized encoder as an int8 QDQ ONNX file, run on a graph runtime and timed
against torch."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["onnx_export"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def onnx_export(cfg: dict, model_ref: Ref, calib_ref: Ref, acts_ref: Ref, smooth_ref: Ref, gptq_ref: Ref,
                mixed_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "capture_activations": acts_ref,
            "smooth": smooth_ref, "gptq_lowrank": gptq_ref, "mixed": mixed_ref}

    def build(tmp):
        if c.onnx is None:
            STAGE.artifact.write(tmp, {"enabled": False})
            return {"enabled": False}
        from sam2ptq_core.export.onnx import activation_ranges, build_export, pick_runtime, static_twin
        from sam2ptq_core.pipeline.artifacts import shipped_layers
        from sam2ptq_core.pipeline.runtime import load_fp_model
        from sam2ptq_core.sam2.images import normalize
        from sam2ptq_core.sam2.quantized_model import build_quantized
        art = {k: open_artifact(c, r) for k, r in refs.items()}
        runtime = pick_runtime(c.onnx.runtime)
        fp = load_fp_model(c, art["fetch_model"]).model.float()
        qlayers, schemes = shipped_layers(art["gptq_lowrank"], art["mixed"])
        sm = art["smooth"]
        qm = build_quantized(fp, qlayers, sm.scales(), sm.rotation_choice(), schemes)
        twin = static_twin(qm, activation_ranges(art["capture_activations"].stats(), qm))
        pixels = normalize(art["build_calibration_set"].images()[:2])
        with Progress(STAGE.name, 4, "step") as prog:
            info = build_export(tmp, fp, qm, twin, qlayers, schemes, pixels, runtime, c.onnx.latency_runs,
                                c.onnx.precision, prog)
        STAGE.artifact.write(tmp, {"enabled": True, "precision_setting": c.onnx.precision, **info})
        run_logger().info("onnx: %s runs the encoder %.2f× as fast as torch fp32 (%.2f× vs bf16)", runtime,
                          info["speedup_vs_fp32"], info["speedup_vs_bf16"])
        return {"enabled": True, "runtime": runtime, "speedup_vs_fp32": round(info["speedup_vs_fp32"], 3)}
    return run_stage(STAGE, c, refs, build)
