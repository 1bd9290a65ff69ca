"""Rebuild the quantized SAM2 from an output tree alone: the DeepCompressor-style cache files or nunchaku's files.

Each layer's formats (weight group, activation format, shift) come from the tree's ``scheme.json``, the schemes the
run quantized with; a tree written before sam2ptq stored it (2026-11-29) is read with the same rules applied to its
``config.yaml`` (which records mixed precision's choice), so both give the same schemes.

Both paths produce the same QuantLinear parameters as the pipeline (weights exactly code·scale, the same smooth,
branch and rotation), so the rebuilt model's encoder output equals the in-pipeline model's bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..algorithms.layer_recipe import kernel_bias
from ..algorithms.quantizers import QParams, QTensor, dequantize
from ..config import load_config
from ..sam2.loading import build_config, load_model
from ..sam2.quantized_model import LayerArtifacts, quantize_model
from ..schemes import read_schemes, shipped_schemes
from .cache_files import PREFIX, codes_from_weight, read_cache_files, split_shift

__all__ = ["load_quantized"]


def _schemes(out: Path, cfg, names) -> dict:
    """{layer: LayerScheme} for ``names``: from scheme.json, or from config.yaml's rules in an older tree."""
    f = out / "scheme.json"
    if f.is_file():
        import json
        got = read_schemes(json.loads(f.read_text()))
        missing = set(names) - set(got)
        if missing:
            raise ValueError(f"{f} has no scheme for {sorted(missing)[:3]}: the tree is incomplete; export it again")
        return got
    mix = cfg.quant.mixed
    return shipped_schemes(cfg.quant, names, mix.layers if mix is not None else ())


def _from_cache(out: Path, cfg) -> nn.Module:
    files = read_cache_files(out / "cache")
    if not files["state"] or not files["scale"]:
        raise FileNotFoundError(f"{out}/cache has no model.pt/scale.pt: not a sam2ptq output tree")
    files["state"], shifts = split_shift(files["state"])
    if any(k.startswith("mask_decoder.") for k in files["state"]):  # written with --save-model: self-contained
        from transformers import Sam2Model
        with torch.device("meta"):
            model = Sam2Model(build_config(cfg.model.name, cfg.quant.calib.image_size, cfg.model.arch))
        model.load_state_dict(files["state"], strict=True, assign=True)
        model.eval()
    else:  # encoder only: the rest comes from the original checkpoint (or the seeded random model)
        model = load_model(cfg.model.name, path=cfg.model.path, revision=cfg.model.revision,
                           random_init=cfg.model.random_init, seed=cfg.seed, image_size=cfg.quant.calib.image_size,
                           arch=cfg.model.arch).model
        missing = model.load_state_dict(files["state"], strict=False)
        bad = [k for k in missing.missing_keys if k.startswith("vision_encoder.")]
        if bad or missing.unexpected_keys:
            raise ValueError(f"model.pt does not match the architecture: {(bad + missing.unexpected_keys)[:3]}")
    arts = {}
    rot = files["rotation"]
    rotated = set(rot.get("layers", []))
    names = [k[len(PREFIX): -len(".weight.scale.0")] for k in files["scale"] if k.endswith(".weight.scale.0")]
    schemes = _schemes(out, cfg, names)
    static = _static_ranges(out, schemes)
    for name in names:
        full, sch = PREFIX + name, schemes[name]
        w = files["state"][f"{full}.weight"]
        scale = files["scale"][f"{full}.weight.scale.0"]
        codes_from_weight(w, scale, files["scale"].get(f"{full}.weight.zero"), sch.w_group)  # on-grid check
        br = files["branch"].get(full, {})
        shift, bias, sm = shifts.get(full, 0.0), files["state"].get(f"{full}.bias"), files["smooth"].get(full)
        if shift != sch.shift:
            raise ValueError(f"model.pt holds shift {shift} for {name} but scheme.json says {sch.shift}: the tree "
                             "was edited; export it again")
        if shift:  # model.pt: the folded bias (DeepCompressor's ShiftedLinear); the kernel adds the branch's share
            sd = cfg.quant.wgts.scale_dtype
            bias = kernel_bias(bias, br.get("a.weight"), br.get("b.weight"), sm, shift,
                               None if sd is None else getattr(torch, sd))
        arts[name] = LayerArtifacts(sch, w.float(), bias, sm, br.get("a.weight"), br.get("b.weight"),
                                    rotate=full in rotated, rotate_random=rot.get("random", False),
                                    rotate_seed=rot.get("seed", 0), act_qparams=static.get(name))
    from ..sam2.attention import set_static
    set_static(quantize_model(model, arts), static)  # Q·Kᵀ, when ranges.json holds attention entries
    return model


def _static_ranges(out: Path, schemes: dict) -> dict:
    """The static activation parameters of a tree whose schemes are static (``ranges.json``), else {}."""
    if not any(s.a_static for s in schemes.values()):
        return {}
    f = out / "ranges.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing but scheme.json has static activations: export the tree again")
    from ..algorithms.qdq import ranges_qparams
    return ranges_qparams(json.loads(f.read_text()))


def _from_nunchaku(out: Path, cfg) -> nn.Module:
    from transformers import Sam2Model

    from .nunchaku import read_nunchaku
    layers, rest, _ = read_nunchaku(out / "nunchaku")
    with torch.device("meta"):
        model = Sam2Model(build_config(cfg.model.name, cfg.quant.calib.image_size, cfg.model.arch))
    arts = {}
    schemes = _schemes(out, cfg, layers)
    for name, r in layers.items():
        sch = schemes[name]
        if (sch.w_dtype, sch.w_group, r["act_shift"]) != ("sint4", 64, sch.shift):
            raise ValueError(f"nunchaku's {name} (sint4/g64, shift {r['act_shift']}) differs from scheme.json "
                             f"({sch.label()}): the tree was edited; export it again")
        w = dequantize(QTensor(r["codes"], QParams(r["scale"], None, 64), "sint4"))  # nunchaku: groups of 64
        arts[name] = LayerArtifacts(sch, w, r["bias"], r["smooth"], r.get("a"), r.get("b"))
        rest[f"{PREFIX}{name}.weight"] = w
        rest[f"{PREFIX}{name}.bias"] = r["bias"]  # the kernel's bias (the float model's slot only holds it)
    model.load_state_dict(rest, strict=True, assign=True)
    return quantize_model(model.eval(), arts)


def load_quantized(out_dir: str | Path, fmt: str = "cache") -> nn.Module:
    """The quantized Sam2Model of an output tree (``fmt`` "cache" or "nunchaku"), in float32 on CPU."""
    out = Path(out_dir)
    if not (out / "config.yaml").is_file():
        raise FileNotFoundError(f"{out} has no config.yaml: pass an output directory written by quantize_sam2.py")
    cfg = load_config(out / "config.yaml")
    if fmt == "nunchaku":
        return _from_nunchaku(out, cfg)
    if fmt != "cache":
        raise ValueError(f"unknown format {fmt!r}; use cache or nunchaku")
    return _from_cache(out, cfg)
