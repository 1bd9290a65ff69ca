"""The sensitivity and mixed stages' work: measure each layer alone at the target precision, pick the layers that
fall back under the configured policy, and re-quantize them at w8a8 (or leave them float for fp16)."""
from __future__ import annotations

import fnmatch

from ..algorithms.mixed_precision import average_bits, choose_fallback, fallback_order
from .config import RunConfig, group_size_of

__all__ = ["measure_sensitivity", "choose_and_requantize"]

FALLBACK_BITS = {"w8a8": 8, "fp16": 16}


def measure_sensitivity(c: RunConfig, arts: dict, progress=None) -> dict:
    """{"layers": {layer: {embedding_sqnr_db, block_rel_err, params}}, "images": n} (empty without quant.mixed)."""
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
    loss = {k: 10 ** (-min(v["embedding_sqnr_db"], 300.0) / 10) for k, v in sens.items()}  # noise / signal
    params = {k: v["params"] for k, v in sens.items()}
    bits, fb_bits = int(c.quant.wgts.dtype[-1]), FALLBACK_BITS[m.fallback]
    if m.layers:
        chosen = [k for k in sens if any(fnmatch.fnmatch(k, p) for p in m.layers)]
    else:
        chosen = choose_fallback(loss, params, bits, fb_bits, m.budget_bits, m.num_layers)
    info = {"fallback": m.fallback, "layers": chosen, "order": fallback_order(loss, params),
            "avg_weight_bits": average_bits(params, set(chosen), bits, fb_bits), "target_bits": bits,
            "sensitivity_db": {k: v["embedding_sqnr_db"] for k, v in sens.items()}}
    if m.fallback == "fp16":  # shipped as the float layers: no error
        info["layer_errors"] = [{"name": k, "weight_rel_err": 0.0, "output_rel_err": 0.0} for k in chosen]
    if m.fallback != "w8a8" or not chosen:
        return {}, info
    saved, info["layer_errors"] = _requantize_w8a8(c, arts, chosen, progress)
    return saved, info


def _requantize_w8a8(c: RunConfig, arts: dict, names: list[str], progress) -> tuple[dict, list[dict]]:
    """The fallback layers at W8A8 (sint8 per-channel weights with GPTQ when it is on, per-token sint8 activations),
    with the run's smoothing scales and rotation choice, on the captured float statistics; and their errors."""
    from dataclasses import replace

    from ..algorithms.model_recipe import quantize_and_report
    from .runtime import chosen_rotations, device_of, layer_spec, load_layer_inputs
    li = load_layer_inputs(c, arts["fetch_model"], arts["capture_activations"], arts["rotate"])
    layers = {k: li.layers[k] for k in names}
    spec = replace(layer_spec(c.quant, c.seed), w_dtype="sint8", w_group=-1, a_dtype="sint8", a_group=-1, rank=0)
    saved, rows, _ = quantize_and_report(layers, li.stats, arts["smooth"].scales(),
                                         chosen_rotations(li, arts["smooth"], names), spec, progress,
                                         device=device_of(c))
    for d in saved.values():
        d.update(a_dtype="sint8", a_group=-1, bits=8)
    return saved, rows
