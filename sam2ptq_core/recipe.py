"""Per-layer recipe over a whole model: rotations, smoothing search and GPTQ + low-rank for every trunk linear.

Pure functions over (weights, statistics, config slices); the tasks load inputs and store the outputs.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn

from .config import QuantCfg, group_size_of
from .layerq import LayerQuant, LayerSpec, layer_errors, quantize_layer, smoothing_objective
from .qmodel import LayerArtifacts
from .rotate import Rotation, hadamard
from .smooth import SmoothResult, search_smoothing
from .stats import LayerStats

__all__ = ["layer_spec", "rotation_spec", "rotation_matrices", "layer_rotations", "search_all_smoothing",
           "quantize_all", "all_layer_errors", "artifacts_from_saved", "export_bias"]

Progress = Callable[[int, int, str], None]


def layer_spec(q: QuantCfg, seed: int) -> LayerSpec:
    w, g, lr = q.wgts, q.wgts.kernel_gptq, q.wgts.low_rank
    return LayerSpec(
        w_dtype=w.dtype, w_group=group_size_of(w.group_shapes),
        a_dtype=q.ipts.dtype, a_group=group_size_of(q.ipts.group_shapes),
        rank=lr.rank if lr else 0, lowrank_iters=lr.num_iters if lr else 1, randomized_svd=lr.randomized if lr else True,
        gptq=g is not None, block_size=g.block_size if g else 128, damp_percentage=g.damp_percentage if g else 0.01,
        num_inv_tries=g.num_inv_tries if g else 250, act_order=g.act_order if g else False, seed=seed,
        scale_dtype=w.scale_dtype)


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


def artifacts_from_saved(qlayers: dict[str, dict], smooth: dict[str, torch.Tensor],
                         rotation: dict) -> dict[str, LayerArtifacts]:
    """LayerArtifacts from the stored per-layer dicts (weight, bias, a, b). ``rotation``: {"random", "seed",
    "layers": [names of the rotated layers]}."""
    arts = {}
    rotated = set(rotation.get("layers", []))
    for name, d in qlayers.items():
        bias = d["bias"] if d["bias"].numel() else None
        arts[name] = LayerArtifacts(d["weight"].float(), bias, smooth.get(name), d["a"], d["b"],
                                    rotate=name in rotated, rotate_random=rotation.get("random", False),
                                    rotate_seed=rotation.get("seed", 0))
    return arts
