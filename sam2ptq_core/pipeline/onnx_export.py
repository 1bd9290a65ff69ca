"""The ONNX stages' work. onnx_export: the quantized model in its runtime form (static activations from
static_ranges, weights from their codes) traced to ONNX, with the float encoder beside it; what the file is depends
on the recipe only. onnx_runtime: the file run on this machine's runtime (fidelity, latency, held-out masks), keyed
by what those numbers depend on (``runtime_key``)."""
from __future__ import annotations

from pathlib import Path

from ..config import RunConfig, config_hash
from ..export.runtime_choice import machine, pick_runtime, runtime_version
from . import artifacts as A

__all__ = ["export_encoder", "measure_encoder", "runtime_key"]


def _models(c: RunConfig, art: dict):
    """(loaded float model, float encoder model, fake-quant model, runtime-form twin) from the upstream artifacts."""
    from ..export.onnx_graph import runtime_model
    from ..sam2.quantized_model import build_quantized
    from .stage_inputs import load_fp_model
    fp = load_fp_model(c, art["fetch_model"])
    model = fp.model.float()
    qlayers, schemes = A.shipped_layers(art["gptq_lowrank"], art["mixed"])
    sm, qparams = art["smooth"], art["static_ranges"].qparams()
    qm = build_quantized(model, qlayers, sm.scales(), sm.rotation_choice(), schemes,
                         qparams if c.quant.ipts.static else None)
    return fp, model, qm, runtime_model(qm, qlayers, qparams)


def _pixels(art: dict):
    from ..sam2.images import normalize
    return normalize(art["build_calibration_set"].images()[:2])


def scheme_summary(c: RunConfig, activations: str) -> str:
    """One line naming the recipe, for the files' metadata and the X-AnyLabeling display name."""
    w, q = c.quant.wgts, c.quant
    g = w.group_shapes[0][-1]
    parts = [f"weights {w.dtype} " + ("per channel" if g == -1 else f"group {g}"), f"activations {activations}"]
    parts += [n for n, on in (("smoothing", q.smooth), ("rotation", q.rotation), ("GPTQ", w.kernel_gptq)) if on]
    if w.low_rank is not None:
        parts.append(f"low-rank branch rank {w.low_rank.rank}")
    return "; ".join(parts)


def file_metadata(c: RunConfig, fetched: dict, random_weights: bool, source: str, activations: str) -> dict:
    """The pair's ``metadata_props`` (issue 29): model, revision, weights sha256, scheme, image size, mean/std,
    resize rule, sam2ptq version, random_weights; ``fetched``: fetch_model's manifest meta."""
    from .. import __version__
    from ..export.onnx_interface import RESIZE
    from ..sam2.images import MEAN, STD
    from ..sam2.variants import hub_id
    s = c.quant.calib.image_size
    return {"producer": "sam2ptq", "sam2ptq_version": __version__, "model": c.model.name,
            "model_name": c.model.path or hub_id(c.model.name), "revision": c.model.revision, "source": source,
            "weights_sha256": fetched.get("weights_sha256", ""), "random_weights": str(random_weights).lower(),
            "config_hash": config_hash(c), "scheme": scheme_summary(c, activations), "activations": activations,
            "pipeline_activations": "static" if c.quant.ipts.static else "dynamic per token (the file is static)",
            "image_size": str(s), "input_shape": f"[1, 3, {s}, {s}]", "mean": str(list(MEAN)), "std": str(list(STD)),
            "pixel_scale": "1/255", "resize": RESIZE, "color": "RGB",
            "interface": "SAM2 ONNX encoder/decoder (ONNX-SAM2-Segment-Anything, samexporter)"}


def export_encoder(c: RunConfig, art: dict, d: Path) -> dict:
    """``d/encoder.onnx`` (the quantized encoder), ``d/decoder.onnx`` (the float prompt encoder + mask decoder),
    ``d/float.onnx`` (the latency baseline), all in the SAM2 apps' interface, and ``onnx_scoring.export_files``'
    record of them. ``art``: the stage's upstream artifacts by stage name."""
    from ..export.onnx_graph import activation_format
    from ..export.onnx_scoring import export_files
    fp, model, _, twin = _models(c, art)
    acts = activation_format(twin)
    meta = file_metadata(c, art["fetch_model"].meta, fp.random_weights, fp.source, acts)
    info = export_files(d, model, twin, c.quant.calib.image_size, meta)
    return {**info, "scheme": meta["scheme"], "random_weights": fp.random_weights, "model_source": fp.source,
            "metadata": meta}


def runtime_key(c: RunConfig) -> dict:
    """What onnx_runtime's numbers depend on beyond its config slice: the runtime "auto" resolves to here, its
    version and the machine (CPU model, usable CPUs). Torch-free: computed on every run, cached ones too."""
    rt = pick_runtime(c.onnx.runtime)
    return {"runtime_resolved": rt, "runtime_version": runtime_version(rt), "machine": machine()}


def measure_encoder(c: RunConfig, art: dict, progress=None) -> dict:
    """The onnx_export stage's file on the resolved runtime: ``onnx_scoring.measure_runtime`` on two calibration
    images, then ``score_runtime`` on the held-out images the evaluate stage drew (``metrics.json``'s eval_files),
    prompted as there. Returns the file's record, the measurement and ``heldout`` (the report's real-kernel row)."""
    from ..export.model_cache import ModelCache
    from ..export.onnx_scoring import measure_runtime, score_runtime
    from .evaluation import heldout_items
    from .progress import run_logger
    ox, cache = art["onnx_export"], ModelCache.of_run(c.cache, run_logger())
    fp, model, qm, twin = _models(c, art)
    o = c.onnx
    got = measure_runtime(ox.encoder_file(), ox.float_file(), model, qm, twin, _pixels(art),
                          pick_runtime(o.runtime), o.latency_runs, o.precision, progress, cache)
    info = {**ox.info(), **got}
    files = [Path(f) for f in art["evaluate"].metrics()["eval_files"]]
    ev = c.quant.eval
    info["heldout"] = score_runtime(fp.model, ox.encoder_file(), info, heldout_items(c, files),
                                    c.quant.calib.image_size, ev.points_per_side, cache)
    return info
