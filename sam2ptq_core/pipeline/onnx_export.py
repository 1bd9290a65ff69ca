"""The onnx_export stage's work: the quantized model in its runtime form (static activations from static_ranges,
weights from their codes), traced to ONNX, run and timed on the chosen runtime."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig, config_hash
from ..export.onnx_graph import runtime_model
from ..export.onnx_scoring import build_export
from ..export.runtimes import pick_runtime
from ..sam2.images import normalize
from ..sam2.quantized_model import build_quantized
from . import artifacts as A
from .runtime import load_fp_model

__all__ = ["export_encoder"]


def export_encoder(c: RunConfig, art: dict, d: Path, progress=None) -> dict:
    """``d/encoder.onnx`` (+ ``d/float.onnx``) and what ``onnx_scoring.build_export`` measured. ``art``: the
    stage's upstream artifacts by stage name."""
    runtime = pick_runtime(c.onnx.runtime)
    fp = load_fp_model(c, art["fetch_model"])
    model = fp.model.float()
    qlayers, schemes = A.shipped_layers(art["gptq_lowrank"], art["mixed"])
    sm, qparams = art["smooth"], art["static_ranges"].qparams()
    qm = build_quantized(model, qlayers, sm.scales(), sm.rotation_choice(), schemes,
                         qparams if c.quant.ipts.static else None)
    twin = runtime_model(qm, qlayers, qparams)
    meta = {"producer": "sam2ptq", "random_weights": str(fp.random_weights).lower(), "model": c.model.name,
            "source": fp.source, "config_hash": config_hash(c), "activations": "static uint8 per tensor",
            "pipeline_activations": "static" if c.quant.ipts.static else "dynamic per token (the file is static)"}
    pixels = normalize(art["build_calibration_set"].images()[:2])
    from ..export.model_cache import ModelCache
    from .progress import run_logger
    return build_export(d, model, qm, twin, pixels, runtime, c.onnx.latency_runs, c.onnx.precision, meta, progress,
                        ModelCache.of_run(c.cache, run_logger()))
