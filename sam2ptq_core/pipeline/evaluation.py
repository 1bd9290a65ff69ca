"""The evaluate stage's work for a run config: pick the held-out images, build float and quantized models from
the stage artifacts, score them and assemble metrics.json (``random_weights`` first). Nothing here depends on a
graph runtime: changing ``onnx``'s runtime settings never re-runs it."""
from __future__ import annotations

from pathlib import Path

from ..algorithms.mixed_precision import branch_share
from ..algorithms.scheme import qdtype, tally
from ..config import RunConfig, config_hash
from ..sam2.evaluation import evaluate_images, prompt_ious, summarize
from ..sam2.images import files_digest, held_out, preprocess
from ..sam2.loading import trunk
from ..sam2.quantized_model import build_quantized
from . import artifacts as A
from .stage_inputs import load_fp_model, to_run_dtype
from .stages import store_of

__all__ = ["held_out_images", "heldout_items", "quantized_model", "run_evaluation"]


def held_out_images(c: RunConfig, calib_paths: set[str], only_names: set[str] | None = None) -> list[Path]:
    """``quant.eval.path`` or, without it, a seeded choice from the calibration folder disjoint from calibration."""
    ev = c.quant.eval
    return held_out(ev.path, c.quant.calib.path, ev.num_samples, c.seed, calib_paths, only_names)


def heldout_items(c: RunConfig, paths: list[Path], coco=None):
    """The evaluation items of ``paths`` (``evaluate_images``' input: path, uint8 pixels, original size, GT prompts
    from ``quant.eval.annotations`` or None), preprocessed through the store's cache."""
    from ..sam2.coco import gt_prompts, load_coco
    if coco is None and c.quant.eval.annotations:
        coco = load_coco(c.quant.eval.annotations)
    cache = store_of(c).preprocess_cache()
    digest = files_digest(cache, paths)
    for p in paths:
        x, hw = preprocess(cache, p, digest[str(p)], c.quant.calib.image_size)
        yield p, x, hw, (gt_prompts(coco[0], coco[1][p.name]) if coco else None)


def quantized_model(c: RunConfig, fp_model, smooth: A.SmoothingChoice, shipped: tuple[dict, dict],
                    ranges: A.StaticRanges):
    """The run's quantized model as the pipeline evaluates it (fake quantization; static activations when
    ``quant.ipts.static``, the pipeline's format then), a deep copy of ``fp_model``; ``shipped``:
    ``artifacts.shipped_layers``'s (layers, schemes)."""
    qlayers, schemes = shipped
    static = ranges.qparams() if c.quant.ipts.static else None  # the pipeline's format is static: score it
    return build_quantized(fp_model, qlayers, smooth.scales(), smooth.rotation_choice(), schemes, static)


def run_evaluation(c: RunConfig, fetched: A.FetchedModel, calib: A.CalibrationSet, smooth: A.SmoothingChoice,
                   gptq: A.QuantizedLayers, mixed: A.MixedChoice, ranges: A.StaticRanges,
                   progress=None) -> tuple[dict, list[dict], dict]:
    """(metrics, overlays, per-prompt IoUs by kind) of the quantized model against the float one (the ONNX file's
    row is the onnx_runtime stage's)."""
    from ..sam2.coco import load_coco
    fp = load_fp_model(c, fetched)
    qlayers, schemes = A.shipped_layers(gptq, mixed)
    qm = quantized_model(c, fp.model, smooth, (qlayers, schemes), ranges)
    coco = load_coco(c.quant.eval.annotations) if c.quant.eval.annotations else None
    paths = held_out_images(c, {s["path"] for s in calib.sources()}, set(coco[1]) if coco else None)
    size = c.quant.calib.image_size
    per_img, overlays = evaluate_images(to_run_dtype(fp.model, c), to_run_dtype(qm, c), heldout_items(c, paths, coco),
                                        size, c.quant.eval.points_per_side, c.quant.eval.num_overlays, progress)
    q = c.quant
    a_bits = qdtype(q.ipts.dtype).bits if q.ipts.dtype else 16
    layer_info = gptq.layer_report()
    ch = mixed.choice()
    shipped = {r["name"]: r for r in ch.get("layer_errors", [])}  # mixed-precision fallbacks as shipped
    layer_info["layers"] = [shipped.get(r["name"], r) for r in layer_info["layers"]]
    metrics = {  # random_weights first: whoever opens the file sees it before any number
        "random_weights": fp.random_weights, "model": c.model.name, "source": fp.source,
        "config_hash": config_hash(c),
        "quant": f"W{qdtype(q.wgts.dtype).bits}A{a_bits} ({q.wgts.dtype} weights, "
                 f"{q.ipts.dtype or 'float'} activations)",
        "eval_images": len(paths), "eval_files": [str(p) for p in paths],
        "eval_dtype": str(next(qm.parameters()).dtype).replace("torch.", ""), "eval_device": c.model.device,
        "layer_errors_on": "calibration token sample (in-sample)", **summarize(per_img),
        "low_rank": branch_share(qlayers, schemes, q.wgts.low_rank.rank if q.wgts.low_rank else 0),
        "schemes": tally(mixed.schemes()),
        "layers": layer_info["layers"], "gptq_fallbacks": sorted(layer_info["fallbacks"]),
    }
    floats = {k for k, s in mixed.schemes().items() if not s.quantized}
    fp16 = {k: int(m.weight.numel()) for k, m in trunk(fp.model).named_modules() if k in floats}
    lr = metrics["low_rank"]
    metrics["size"] = {"quantized_linears_bytes": lr["lowbit_weight_bytes"] + lr["branch_16bit_bytes"]
                       + 2 * sum(fp16.values()), "fallback_16bit_bytes": 2 * sum(fp16.values())}
    if ch.get("fallback"):
        metrics["mixed"] = {k: ch[k] for k in ("fallback", "layers", "avg_weight_bits", "base_weight_bits",
                                               "target_bits", "sensitivity_db")}
    return metrics, overlays, prompt_ious(per_img)

