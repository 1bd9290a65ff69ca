"""The sensitivity and mixed stages' work: measure each layer alone at the target precision, pick the layers that
fall back under the configured policy, and re-quantize them at w8a8 (or leave them float for fp16)."""
from __future__ import annotations

import fnmatch

from ..algorithms.mixed_precision import WeightFormat, average_bits, choose_fallback, fallback_order, weight_bytes
from ..config import QuantCfg, RunConfig, group_size_of

__all__ = ["measure_sensitivity", "choose_and_requantize", "weight_formats", "layer_costs", "quantized_shapes",
           "walk_fallbacks"]

FALLBACK_FORMATS = {"w8a8": WeightFormat(8), "fp16": WeightFormat(16)}


def weight_formats(q: QuantCfg) -> tuple[WeightFormat, WeightFormat]:
    """(the run's weight format, its mixed-precision fallback's) as shipped: codes, 16-bit scales/zeros, branch."""
    lr = q.wgts.low_rank
    base = WeightFormat(int(q.wgts.dtype[-1]), group_size_of(q.wgts.group_shapes), q.wgts.dtype.startswith("u"),
                        lr.rank if lr is not None else 0)
    return base, FALLBACK_FORMATS[q.mixed.fallback if q.mixed is not None else "w8a8"]


def layer_costs(q: QuantCfg, shapes: dict[str, tuple[int, int]]) -> tuple[dict, dict, dict]:
    """({layer: parameters}, {layer: bytes at the run's format}, {layer: bytes at the fallback}) for (in, out)
    shapes."""
    base, fb = weight_formats(q)
    return ({k: i * o for k, (i, o) in shapes.items()}, {k: weight_bytes(i, o, base) for k, (i, o) in shapes.items()},
            {k: weight_bytes(i, o, fb) for k, (i, o) in shapes.items()})


def measure_sensitivity(c: RunConfig, arts: dict, progress=None) -> dict:
    """{"layers": {layer: {sqnr_db (three levels), embedding_sqnr_db, loss, block_rel_err, params}}, "images": n}
    (empty without quant.mixed)."""
    if c.quant.mixed is None:
        return {"layers": {}, "images": 0}
    from ..sam2.images import normalize
    from ..sam2.quantized_model import artifacts_from_saved
    from ..sam2.sensitivity import layer_sensitivity
    from .runtime import load_fp_model, to_run_dtype
    model = to_run_dtype(load_fp_model(c, arts["fetch_model"]).model, c)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    images = arts["build_calibration_set"].images()[:c.quant.mixed.num_images]
    pixels = [normalize(images[i:i + 1]).to(dev, dt) for i in range(images.shape[0])]
    sm, qlayers = arts["smooth"], arts["gptq_lowrank"].qlayers()
    if c.quant.calib.mode == "sequential":  # the walk already shipped the fallbacks at their own format
        fb = walk_fallbacks(c.quant, qlayers)
        qlayers = {k: v for k, v in qlayers.items() if k not in fb}
    layer_arts = artifacts_from_saved(qlayers, sm.scales(), sm.rotation_choice())
    ip = c.quant.ipts
    res = layer_sensitivity(model, layer_arts, pixels, ip.dtype, group_size_of(ip.group_shapes), progress)
    for k, q in qlayers.items():
        res[k]["params"] = int(q["codes"].numel())
    return {"layers": res, "images": len(pixels)}


def choose_and_requantize(c: RunConfig, arts: dict, progress=None) -> tuple[dict, dict]:
    """(fallback layers as saved-layer dicts, mixed.json) for the configured policy."""
    m = c.quant.mixed
    if m is None:
        return {}, {"fallback": None, "layers": [], "order": []}
    sens = arts["sensitivity"].layers()
    loss = {k: v["loss"] for k, v in sens.items()}  # noise / signal power, mean of the three encoder outputs
    shapes = quantized_shapes(c)
    params, cost, fb_cost = layer_costs(c.quant, shapes)
    if m.layers:
        chosen = [k for k in shapes if any(fnmatch.fnmatch(k, p) for p in m.layers)]
    else:
        chosen = choose_fallback(loss, params, cost, fb_cost, m.budget_bits, m.num_layers)
    info = {"fallback": m.fallback, "layers": chosen,
            "order": fallback_order(loss, cost, fb_cost),
            "avg_weight_bits": average_bits(params, cost, fb_cost, set(chosen)),
            "base_weight_bits": average_bits(params, cost, fb_cost, set()),
            "target_bits": int(c.quant.wgts.dtype[-1]),
            "sensitivity_db": {k: v["embedding_sqnr_db"] for k, v in sens.items()}}
    if m.fallback == "fp16":  # shipped as the float layers: no error
        info["layer_errors"] = [{"name": k, "weight_rel_err": 0.0, "output_rel_err": 0.0} for k in chosen]
    if m.fallback != "w8a8" or not chosen:
        return {}, info
    if c.quant.calib.mode == "sequential":  # quantized at W8A8 inside the block walk, on the quantized prefix
        gptq = arts["gptq_lowrank"]
        rows = {r["name"]: r for r in gptq.layer_report()["layers"]}
        info["layer_errors"] = [rows[k] for k in chosen]
        return {k: v for k, v in gptq.qlayers().items() if k in chosen}, info
    saved, info["layer_errors"] = _requantize_w8a8(c, arts, chosen, progress)
    return saved, info


def quantized_shapes(c: RunConfig) -> dict[str, tuple[int, int]]:
    """{layer: (in, out)} of every trunk linear the run quantizes (the variant table minus ``quant.skip``)."""
    from ..sam2.variants import linear_shapes
    return {k: v for k, v in linear_shapes(c.model.name, c.model.arch).items()
            if not any(fnmatch.fnmatch(k, p) for p in c.quant.skip)}


def walk_fallbacks(q: QuantCfg, names) -> set[str]:
    """Sequential mode decides each layer's format before calibration: the layers of ``names`` that the
    ``quant.mixed.layers`` patterns match, which the block walk quantizes at W8A8 or leaves float (fp16)."""
    if q.mixed is None or q.calib.mode != "sequential":
        return set()
    return {n for n in names if any(fnmatch.fnmatch(n, p) for p in q.mixed.layers)}


def _requantize_w8a8(c: RunConfig, arts: dict, names: list[str], progress) -> tuple[dict, list[dict]]:
    """The fallback layers at W8A8 (sint8 per-channel weights with GPTQ when it is on, per-token sint8 activations),
    with the run's smoothing scales and rotation choice, on the captured float statistics; and their errors."""
    from ..algorithms.model_recipe import quantize_and_report
    from .runtime import chosen_rotations, device_of, fallback_spec, load_layer_inputs, mark_fallback
    li = load_layer_inputs(c, arts["fetch_model"], arts["capture_activations"], arts["rotate"])
    layers = {k: li.layers[k] for k in names}
    spec = fallback_spec(c.quant, c.seed)
    saved, rows, _ = quantize_and_report(layers, li.stats, arts["smooth"].scales(),
                                         chosen_rotations(li, arts["smooth"], names), spec, progress,
                                         device=device_of(c))
    for d in saved.values():
        mark_fallback(d, spec)
    return saved, rows
