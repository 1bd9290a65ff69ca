"""The PTQ flow: wiring only. Each task resolves its inputs from the stage store and returns a small Ref."""
from __future__ import annotations

from prefect import flow

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.preflight import preflight
from sam2ptq_core.pipeline.progress import run_logger
from tasks.calibration import build_calibration_set
from tasks.capture import capture_activations
from tasks.evaluate import evaluate
from tasks.evaluate_video import evaluate_video
from tasks.export import export
from tasks.fetch_model import fetch_model
from tasks.gptq_lowrank import gptq_lowrank
from tasks.mixed import mixed
from tasks.onnx_export import onnx_export
from tasks.onnx_runtime import onnx_runtime
from tasks.regression import regression_check
from tasks.rotate import rotate
from tasks.sensitivity import sensitivity
from tasks.smooth import smooth
from tasks.static_ranges import static_ranges


@flow(name="sam2-ptq", log_prints=False, validate_parameters=True)
def sam2_ptq(config: dict | str = "", overrides: list[str] | None = None, accept_baseline: str = "") -> str:
    """Quantize SAM2's image encoder. ``config``: a YAML path or a config dict; ``overrides``: ["key=value", …];
    ``accept_baseline``: a reason to make this run its regression family's new baseline whatever its score (an
    intended recipe change; this run only). Returns the output directory. Rerunning with the same config reuses
    every finished stage."""
    c = load_config(config or None, overrides or [])
    preflight(c)
    cfg = c.model_dump(mode="json")
    refs = {}
    refs["fetch_model"] = fetch_model(cfg)
    refs["build_calibration_set"] = build_calibration_set(cfg)
    refs["capture_activations"] = capture_activations(cfg, refs["fetch_model"], refs["build_calibration_set"])
    refs["rotate"] = rotate(cfg, refs["capture_activations"])
    refs["smooth"] = smooth(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["capture_activations"],
                            refs["rotate"])
    refs["gptq_lowrank"] = gptq_lowrank(cfg, refs["fetch_model"], refs["capture_activations"], refs["rotate"],
                                        refs["smooth"])
    refs["sensitivity"] = sensitivity(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["smooth"],
                                      refs["gptq_lowrank"])
    refs["mixed"] = mixed(cfg, refs["fetch_model"], refs["capture_activations"], refs["rotate"], refs["smooth"],
                          refs["gptq_lowrank"], refs["sensitivity"])
    refs["static_ranges"] = static_ranges(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["smooth"],
                                          refs["gptq_lowrank"], refs["mixed"])
    refs["onnx_export"] = onnx_export(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["smooth"],
                                      refs["gptq_lowrank"], refs["mixed"], refs["static_ranges"])
    refs["evaluate"] = evaluate(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["smooth"],
                                refs["gptq_lowrank"], refs["mixed"], refs["static_ranges"])
    refs["evaluate_video"] = evaluate_video(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["smooth"],
                                            refs["gptq_lowrank"], refs["mixed"], refs["static_ranges"])
    refs["onnx_runtime"] = onnx_runtime(cfg, refs["fetch_model"], refs["build_calibration_set"], refs["smooth"],
                                        refs["gptq_lowrank"], refs["mixed"], refs["static_ranges"],
                                        refs["onnx_export"], refs["evaluate"])
    # fails the flow before a regressed model replaces the output
    verdict = regression_check(cfg, refs["evaluate"], refs["fetch_model"], accept_baseline)
    out = export(cfg, refs, verdict["note"])
    reused = [k for k, r in refs.items() if r["reused"]]
    run_logger().info("stages reused: %d/%d (%s)", len(reused), len(refs), ", ".join(reused) or "none")
    return out
