"""The sensitivity and mixed stages' work: measure each layer alone at the target precision, pick the layers that
fall back under the configured policy, and re-quantize them at w8a8 (or leave them float for fp16)."""
from __future__ import annotations

from ..algorithms.mixed_precision import average_bits, choose_fallback, fallback_order
from ..algorithms.scheme import qdtype
from ..config import RunConfig
from ..schemes import calibration_schemes, layer_costs, quantized_shapes, scheme_rules, schemes_json, shipped_schemes

__all__ = ["measure_sensitivity", "choose_and_requantize"]


def measure_sensitivity(c: RunConfig, arts: dict, progress=None) -> dict:
    """{"layers": {layer: {sqnr_db (three levels), embedding_sqnr_db, loss, block_rel_err, params}}, "images": n}
    (empty without quant.mixed)."""
    if c.quant.mixed is None:
        return {"layers": {}, "images": 0}
    from ..sam2.images import normalize
    from ..sam2.quantized_model import artifacts_from_saved
    from ..sam2.sensitivity import layer_sensitivity
    from .stage_inputs import load_fp_model, to_run_dtype
    model = to_run_dtype(load_fp_model(c, arts["fetch_model"]).model, c)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    images = arts["build_calibration_set"].images()[:c.quant.mixed.num_images]
    pixels = [normalize(images[i:i + 1]).to(dev, dt) for i in range(images.shape[0])]
    sm, qlayers = arts["smooth"], arts["gptq_lowrank"].qlayers()
    schemes = calibration_schemes(c.quant, qlayers)
    # sequential: the walk already quantized the fallbacks at their own format; they are not candidates
    qlayers = {k: v for k, v in qlayers.items() if not schemes[k].fallback}
    layer_arts = artifacts_from_saved(qlayers, sm.scales(), sm.rotation_choice(), schemes)
    res = layer_sensitivity(model, layer_arts, pixels, progress)
    for k, q in qlayers.items():
        res[k]["params"] = int(q["codes"].numel())
    return {"layers": res, "images": len(pixels)}


def choose_and_requantize(c: RunConfig, arts: dict, progress=None) -> tuple[dict, dict, dict]:
    """(fallback layers as saved-layer dicts, mixed.json, scheme.json) for the configured policy; without
    ``quant.mixed`` no fallbacks and every layer at its calibration scheme."""
    m = c.quant.mixed
    names = list(arts["capture_activations"].stats())  # the model's own quantizable layers (a local checkpoint's)
    if m is None:
        return {}, {"fallback": None, "layers": [], "order": []}, _scheme_file(c, names, [])
    shapes = quantized_shapes(c)
    sens = arts["sensitivity"].layers()
    loss = {k: v["loss"] for k, v in sens.items()}  # noise / signal power, mean of the three encoder outputs
    params, cost, fb_cost = layer_costs(c.quant, shapes)
    if m.layers:
        fallback_rule = scheme_rules(c.quant)[-1]  # the rule quant.mixed.layers makes
        chosen = [k for k in shapes if fallback_rule.applies(k)]
    else:
        chosen = choose_fallback(loss, params, cost, fb_cost, m.budget_bits, m.num_layers)
    info = {"fallback": m.fallback, "layers": chosen,
            "order": fallback_order(loss, cost, fb_cost),
            "avg_weight_bits": average_bits(params, cost, fb_cost, set(chosen)),
            "base_weight_bits": average_bits(params, cost, fb_cost, set()),
            "target_bits": qdtype(c.quant.wgts.dtype).bits,
            "sensitivity_db": {k: v["embedding_sqnr_db"] for k, v in sens.items()}}
    scheme = _scheme_file(c, names, chosen)
    if m.fallback == "fp16":  # shipped as the float layers: no error
        info["layer_errors"] = [{"name": k, "weight_rel_err": 0.0, "output_rel_err": 0.0} for k in chosen]
    if m.fallback != "w8a8" or not chosen:
        return {}, info, scheme
    if c.quant.calib.mode == "sequential":  # quantized at W8A8 inside the block walk, on the quantized prefix
        gptq = arts["gptq_lowrank"]
        rows = {r["name"]: r for r in gptq.layer_report()["layers"]}
        info["layer_errors"] = [rows[k] for k in chosen]
        return {k: v for k, v in gptq.qlayers().items() if k in chosen}, info, scheme
    saved, info["layer_errors"] = _requantize_w8a8(c, arts, chosen, progress)
    return saved, info, scheme


def _scheme_file(c: RunConfig, names: list[str], chosen: list[str]) -> dict:
    return schemes_json(shipped_schemes(c.quant, names, chosen), scheme_rules(c.quant, chosen))


def _requantize_w8a8(c: RunConfig, arts: dict, names: list[str], progress) -> tuple[dict, list[dict]]:
    """The fallback layers at W8A8 (sint8 per-channel weights with GPTQ when it is on, per-token sint8 activations),
    with the run's smoothing scales and rotation choice, on the captured float statistics; and their errors."""
    from ..algorithms.model_recipe import quantize_and_report
    from ..schemes import layer_specs
    from .stage_inputs import chosen_rotations, device_of, load_layer_inputs
    li = load_layer_inputs(c, arts["fetch_model"], arts["capture_activations"], arts["rotate"])
    layers = {k: li.layers[k] for k in names}
    specs = layer_specs(c.quant, c.seed, shipped_schemes(c.quant, names, names))
    saved, rows, _ = quantize_and_report(layers, li.stats, arts["smooth"].scales(),
                                         chosen_rotations(li, arts["smooth"], names), specs, progress,
                                         device=device_of(c))
    return saved, rows
