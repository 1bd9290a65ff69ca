"""The recipe over all quantized linears of a model: rotations, smoothing search and GPTQ + low-rank per layer.

Pure functions over (weights, statistics, a LayerSpec); the pipeline loads the inputs and stores the outputs.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from .layer_recipe import LayerQuant, LayerSpec, layer_errors, quantize_layer, smoothing_objective
from .rotation import Rotation, hadamard
from .smoothing import SmoothResult, search_smoothing
from .statistics import LayerStats

__all__ = ["rotation_spec", "rotation_matrices", "layer_rotations", "search_all_smoothing", "quantize_all",
           "all_layer_errors", "export_bias", "saved_layers"]

Progress = Callable[[int, int, str], None]


def rotation_spec(widths: list[int], enabled: bool, random: bool, seed: int) -> dict:
    """What the rotate stage stores: the widths and how to rebuild each matrix, plus its sha256 for verification."""
    if not enabled:
        return {"enabled": False, "widths": []}
    shas = {str(n): hashlib.sha256(hadamard(n, random=random, seed=seed).numpy().tobytes()).hexdigest()
            for n in sorted(set(widths))}
    return {"enabled": True, "random": random, "seed": seed, "widths": sorted(set(widths)), "sha256": shas}


def rotation_matrices(spec: dict) -> dict[int, Rotation]:
    """Rebuild the rotations of a spec, checking each matrix against the stored hash."""
    out = {}
    for n in spec.get("widths", []):
        R = Rotation(n, spec["random"], spec["seed"])
        if hashlib.sha256(R.matrix().numpy().tobytes()).hexdigest() != spec["sha256"][str(n)]:
            raise RuntimeError(f"rebuilt Hadamard matrix of order {n} differs from the stored one")
        out[n] = R
    return out


def layer_rotations(layers: dict[str, nn.Module], by_width: dict[int, Rotation],
                    rotated: dict[str, bool] | None = None) -> dict[str, Rotation | None]:
    """Each layer's rotation: the one of its input width, unless ``rotated`` says the layer keeps none."""
    return {n: (by_width.get(m.in_features) if rotated is None or rotated.get(n, False) else None)
            for n, m in layers.items()}


def search_all_smoothing(layers: dict[str, nn.Module], stats: dict[str, LayerStats],
                         rots: dict[str, Rotation | None], spec: LayerSpec, candidates: list[tuple[float, float]],
                         auto_rotate: bool = False, progress: Progress | None = None
                         ) -> dict[str, tuple[SmoothResult, bool]]:
    """Per layer: the best smoothing candidate, and whether the layer is rotated. With ``auto_rotate`` a layer keeps
    its rotation only when that lowers the best objective (so rotation never makes a layer's error worse)."""
    out = {}
    for i, (name, mod) in enumerate(layers.items()):
        st, R = stats[name], rots.get(name)
        W = mod.weight.detach().float().cpu()
        X = st.sample.float()
        res = search_smoothing(st.absmax, W.abs().amax(0), candidates, smoothing_objective(X, W, R, spec))
        use_r = R is not None
        if use_r and auto_rotate:
            plain = search_smoothing(st.absmax, W.abs().amax(0), candidates, smoothing_objective(X, W, None, spec))
            if min(e for *_, e in plain.log) <= min(e for *_, e in res.log):
                res, use_r = plain, False
        if spec.scale_dtype is not None:  # a 16-bit export stores the scales: keep exactly what it will hold
            res.scale = res.scale.to(spec.torch_scale_dtype).float()
        out[name] = (res, use_r)
        if progress:
            progress(i + 1, len(layers), name)
    return out


def quantize_all(layers: dict[str, nn.Module], stats: dict[str, LayerStats], smooth: dict[str, torch.Tensor],
                 rots: dict[str, Rotation | None], spec: LayerSpec, progress: Progress | None = None
                 ) -> dict[str, LayerQuant]:
    out = {}
    for i, (name, mod) in enumerate(layers.items()):
        W = mod.weight.detach().float().cpu()
        out[name] = quantize_layer(W, stats[name], smooth.get(name), rots.get(name), spec)
        if progress:
            progress(i + 1, len(layers), name)
    return out


def all_layer_errors(layers: dict[str, nn.Module], stats: dict[str, LayerStats], lqs: dict[str, LayerQuant],
                     smooth: dict[str, torch.Tensor], rots: dict[str, Rotation | None], spec: LayerSpec) -> list[dict]:
    rows = []
    for name, mod in layers.items():
        W = mod.weight.detach().float().cpu()
        b = None if mod.bias is None else mod.bias.detach().float().cpu()
        X = stats[name].sample.float()
        e = layer_errors(W, b, X, lqs[name], smooth.get(name), rots.get(name), spec)
        rows.append({"name": name, **e})
    return rows


def export_bias(mod: nn.Module, spec: LayerSpec) -> torch.Tensor:
    """The bias the quantized layer uses: the float bias, rounded to the 16-bit export dtype when one is set
    (an empty tensor when the layer has none)."""
    if mod.bias is None:
        return torch.empty(0)
    b = mod.bias.detach().float().cpu()
    return b.to(spec.torch_scale_dtype).float() if spec.scale_dtype is not None else b


def saved_layers(lqs: dict[str, LayerQuant], layers: dict[str, nn.Module], spec: LayerSpec) -> dict[str, dict]:
    """What the GPTQ stage stores per layer: dequantized residual weight, int16 codes, scale, zero (empty for
    symmetric formats), group size, the branch a/b and the bias the quantized layer uses."""
    return {k: {"weight": lq.weight.float(), "codes": lq.q.codes.to(torch.int16), "scale": lq.q.qparams.scale,
                "zero": lq.q.qparams.zero if lq.q.qparams.zero is not None else torch.empty(0),
                "group_size": torch.tensor(lq.q.qparams.group_size), "a": lq.a, "b": lq.b,
                "bias": export_bias(layers[k], spec)}
            for k, lq in lqs.items()}
