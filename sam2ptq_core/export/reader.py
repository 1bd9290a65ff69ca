"""Rebuild the quantized SAM2 from an output tree alone: the DeepCompressor-style cache files or nunchaku's files.

Both paths produce the same QuantLinear parameters as the pipeline (weights exactly code·scale, the same smooth,
branch and rotation), so the rebuilt model's encoder output equals the in-pipeline model's bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..algorithms.layer_recipe import kernel_bias
from ..algorithms.quantizers import QParams, QTensor, dequantize
from ..config import group_size_of, load_config
from ..sam2.loading import build_config, load_model
from ..sam2.quantized_model import LayerArtifacts, quantize_model
from .cache_files import PREFIX, codes_from_weight, read_cache_files, split_shift

__all__ = ["load_quantized"]


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
    for key in files["scale"]:
        if not key.endswith(".weight.scale.0"):
            continue
        full = key[: -len(".weight.scale.0")]
        w = files["state"][f"{full}.weight"]
        name = full[len(PREFIX):]
        mix = cfg.quant.mixed
        w8 = mix is not None and mix.fallback == "w8a8" and name in mix.layers  # a per-channel W8A8 fallback
        codes_from_weight(w, files["scale"][key], files["scale"].get(f"{full}.weight.zero"),
                          -1 if w8 else group_size_of(cfg.quant.wgts.group_shapes))  # on-grid check
        br = files["branch"].get(full, {})
        shift, bias, sm = shifts.get(full, 0.0), files["state"].get(f"{full}.bias"), files["smooth"].get(full)
        if shift:  # model.pt: the folded bias (DeepCompressor's ShiftedLinear); the kernel adds the branch's share
            sd = cfg.quant.wgts.scale_dtype
            bias = kernel_bias(bias, br.get("a.weight"), br.get("b.weight"), sm, shift,
                               None if sd is None else getattr(torch, sd))
        arts[name] = LayerArtifacts(w.float(), bias, sm, br.get("a.weight"), br.get("b.weight"),
                                    rotate=full in rotated, rotate_random=rot.get("random", False),
                                    rotate_seed=rot.get("seed", 0),
                                    act_shift=shift, a_dtype="sint8" if w8 else None, a_group=-1 if w8 else None)
    ip = cfg.quant.ipts
    return quantize_model(model, arts, ip.dtype, group_size_of(ip.group_shapes))


def _from_nunchaku(out: Path, cfg) -> nn.Module:
    from transformers import Sam2Model

    from .nunchaku import read_nunchaku
    layers, rest, _ = read_nunchaku(out / "nunchaku")
    with torch.device("meta"):
        model = Sam2Model(build_config(cfg.model.name, cfg.quant.calib.image_size, cfg.model.arch))
    arts = {}
    for name, r in layers.items():
        w = dequantize(QTensor(r["codes"], QParams(r["scale"], None, 64), "sint4"))  # nunchaku: groups of 64
        arts[name] = LayerArtifacts(w, r["bias"], r["smooth"], r.get("a"), r.get("b"), act_shift=r["act_shift"])
        rest[f"{PREFIX}{name}.weight"] = w
        rest[f"{PREFIX}{name}.bias"] = r["bias"]  # the kernel's bias (the float model's slot only holds it)
    model.load_state_dict(rest, strict=True, assign=True)
    ip = cfg.quant.ipts
    return quantize_model(model.eval(), arts, ip.dtype, group_size_of(ip.group_shapes))


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
