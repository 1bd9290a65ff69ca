"""The recipe over all quantized linears of a model: rotations, smoothing search and GPTQ + low-rank per layer.

Pure functions over (weights, statistics, a LayerSpec); the pipeline loads the inputs and stores the outputs.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from .layer_recipe import (
    LayerQuant,
    LayerSpec,
    folded_bias,
    kernel_bias,
    layer_errors,
    quantize_layer,
    smoothing_objective,
)
from .quantizers import QParams, QTensor
from .rotation import Rotation, hadamard
from .smoothing import SmoothResult, search_smoothing
from .statistics import LayerStats, shift_stats

__all__ = ["rotation_spec", "rotation_matrices", "layer_rotations", "search_all_smoothing", "smoothing_record",
           "quantize_all", "quantize_and_report", "all_layer_errors", "export_bias", "saved_layers", "spec_of",
           "quantize_block"]

Progress = Callable[[int, int, str], None]
Specs = LayerSpec | dict[str, LayerSpec]  # one spec for every layer, or one per layer name


def spec_of(spec: Specs, name: str) -> LayerSpec:
    return spec[name] if isinstance(spec, dict) else spec


def _inputs(stats: dict[str, LayerStats], name: str, spec: Specs, device) -> tuple[LayerStats, LayerSpec]:
    """The layer's statistics as its quantizer sees them (shifted for unsigned-activation layers) and its spec."""
    sp, st = spec_of(spec, name), stats[name].to(device)
    return (shift_stats(st, sp.a_shift) if sp.a_shift else st), sp


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


def _weight(mod: nn.Module, device) -> torch.Tensor:
    return mod.weight.detach().to(device=device, dtype=torch.float32)


def _search(X: torch.Tensor, W: torch.Tensor, x_absmax: torch.Tensor, R: Rotation | None, spec: LayerSpec,
            candidates: list[tuple[float, float]]) -> SmoothResult:
    """Smoothing acts in the rotated basis: with R the candidate scales come from max|X·R| (over the token sample;
    the captured max is of X) and max|W·R|."""
    if R is not None:
        x_absmax, W_abs = R.apply(X).abs().amax(0), R.apply(W).abs().amax(0)
    else:
        W_abs = W.abs().amax(0)
    return search_smoothing(x_absmax, W_abs, candidates, smoothing_objective(X, W, R, spec))


def _units(layers: dict[str, nn.Module], groups) -> list[tuple[str, ...]]:
    """The layers in order, with each group of layers that read one input (``groups``, all members present) as one
    unit led by its first member."""
    member = {n: tuple(g) for g in groups if all(m in layers for m in g) for n in g}
    units, seen = [], set()
    for name in layers:
        if name not in seen:
            unit = member.get(name, (name,))
            seen.update(unit)
            units.append(unit)
    return units


def _stacked(layers: dict[str, nn.Module], unit: tuple[str, ...], device) -> torch.Tensor:
    """The unit's weights stacked along the output dimension (one layer: its weight)."""
    return torch.cat([_weight(layers[n], device) for n in unit]) if len(unit) > 1 else _weight(layers[unit[0]], device)


def search_all_smoothing(layers: dict[str, nn.Module], stats: dict[str, LayerStats],
                         rots: dict[str, Rotation | None], spec: Specs, candidates: list[tuple[float, float]],
                         auto_rotate: bool = False, progress: Progress | None = None, device="cpu",
                         groups=()) -> dict[str, tuple[SmoothResult, bool]]:
    """Per layer: the best smoothing candidate, and whether the layer is rotated. With ``auto_rotate`` a layer keeps
    its rotation only when that lowers the best objective (so rotation never makes a layer's error worse).
    Layers of one group of ``groups`` (they read the same input and share a branch down-projection) are searched
    together on their stacked weights and get one scale and one rotation choice.
    The search runs on ``device``; the returned scales are on the CPU."""
    out = {}
    done = 0
    for unit in _units(layers, groups):
        lead = unit[0]
        (st, sp), R = _inputs(stats, lead, spec, device), rots.get(lead)
        W = _stacked(layers, unit, device)
        X = st.sample.float()
        res = _search(X, W, st.absmax, R, sp, candidates)
        use_r = R is not None
        if use_r and auto_rotate:
            plain = _search(X, W, st.absmax, None, sp, candidates)
            if min(e for *_, e in plain.log) <= min(e for *_, e in res.log):
                res, use_r = plain, False
        if sp.scale_dtype is not None:  # a 16-bit export stores the scales: keep exactly what it will hold
            res.scale = res.scale.to(sp.torch_scale_dtype).float()
        res.scale = res.scale.cpu()
        for name in unit:
            out[name] = (res, use_r)
        done += len(unit)
        if progress:
            progress(done, len(layers), lead)
    return out


def smoothing_record(found: dict[str, tuple[SmoothResult, bool]]) -> tuple[dict, list[str], dict]:
    """What a smoothing search leaves: (scales by layer, the layers that keep their rotation, the search log)."""
    return ({k: r.scale for k, (r, _) in found.items()}, [k for k, (_, rd) in found.items() if rd],
            {k: {"alpha": r.alpha, "beta": r.beta, "rotated": rd, "candidates": r.log} for k, (r, rd) in found.items()})


def _rows(lq: LayerQuant, start: int, stop: int) -> LayerQuant:
    """Output rows [start, stop) of a stacked unit's result; the down-projection ``a`` is shared as it is."""
    qp = lq.q.qparams
    q = QTensor(lq.q.codes[start:stop], QParams(qp.scale[start:stop], None if qp.zero is None else qp.zero[start:stop],
                                                qp.group_size), lq.q.dtype)
    return LayerQuant(lq.weight[start:stop], q, lq.a, lq.b[start:stop], lq.fallback)


def quantize_all(layers: dict[str, nn.Module], stats: dict[str, LayerStats], smooth: dict[str, torch.Tensor],
                 rots: dict[str, Rotation | None], spec: Specs, progress: Progress | None = None,
                 device="cpu", groups=()) -> dict[str, LayerQuant]:
    """Branch + GPTQ (or RTN) of every layer on ``device``; the results stay there (``saved_layers`` moves them).
    A group of ``groups`` is one stacked problem: one branch fit, so its layers share the down-projection ``a``
    bit for bit, and GPTQ on the stacked rows with the input's Hessian (rows are independent given it)."""
    out = {}
    done = 0
    for unit in _units(layers, groups):
        lead = unit[0]
        s = smooth.get(lead)
        st, sp = _inputs(stats, lead, spec, device)
        lq = quantize_layer(_stacked(layers, unit, device), st, None if s is None else s.to(device), rots.get(lead),
                            sp)
        start = 0
        for name in unit:
            rows = layers[name].weight.shape[0]
            out[name] = lq if len(unit) == 1 else _rows(lq, start, start + rows)
            start += rows
        done += len(unit)
        if progress:
            progress(done, len(layers), lead)
    return out


def all_layer_errors(layers: dict[str, nn.Module], stats: dict[str, LayerStats], lqs: dict[str, LayerQuant],
                     smooth: dict[str, torch.Tensor], rots: dict[str, Rotation | None], spec: Specs,
                     device="cpu") -> list[dict]:
    rows = []
    for name, mod in layers.items():
        b = None if mod.bias is None else mod.bias.detach().to(device=device, dtype=torch.float32)
        X = stats[name].sample.to(device=device, dtype=torch.float32)
        s = smooth.get(name)
        e = layer_errors(_weight(mod, device), b, X, lqs[name], None if s is None else s.to(device), rots.get(name),
                         spec_of(spec, name))
        rows.append({"name": name, **e})
    return rows


def quantize_and_report(layers: dict[str, nn.Module], stats: dict[str, LayerStats], smooth: dict[str, torch.Tensor],
                        rots: dict[str, Rotation | None], spec: Specs, progress: Progress | None = None,
                        device="cpu", groups=()) -> tuple[dict[str, dict], list[dict], dict[str, str]]:
    """``quantize_all``, then what a stage stores of it: (saved layers, per-layer error rows, GPTQ fallbacks)."""
    lqs = quantize_all(layers, stats, smooth, rots, spec, progress, device=device, groups=groups)
    rows = all_layer_errors(layers, stats, lqs, smooth, rots, spec, device=device)
    return saved_layers(lqs, layers, spec, smooth), rows, {k: lq.fallback for k, lq in lqs.items() if lq.fallback}


def export_bias(mod: nn.Module, spec: LayerSpec) -> torch.Tensor:
    """The bias the quantized layer uses: the float bias, minus shift·W·1 for a shifted input (computed in float64),
    rounded to the 16-bit export dtype when one is set (an empty tensor when the layer has none and no shift)."""
    b = folded_bias(mod.weight.detach().cpu(), None if mod.bias is None else mod.bias.detach().cpu(), spec.a_shift)
    if b is None:
        return torch.empty(0)
    b = b.float()
    return b.to(spec.torch_scale_dtype).float() if spec.scale_dtype is not None else b


def saved_layers(lqs: dict[str, LayerQuant], layers: dict[str, nn.Module], spec: Specs,
                 smooth: dict[str, torch.Tensor]) -> dict[str, dict]:
    """What the GPTQ stage stores per layer: dequantized residual weight, int16 codes, scale, zero (empty for
    symmetric formats), group size, the branch a/b, the folded bias (b − shift·W·1, DeepCompressor's
    ShiftedLinear bias, what model.pt holds) and the bias the kernel adds (``kernel_bias``: with a shift and a
    branch, the branch's share of the shift included). The layer's formats and shift are its scheme's, stored once
    per run (``sam2ptq_core/schemes.py``), not here."""
    out = {}
    for k, lq in lqs.items():
        sp, a, b = spec_of(spec, k), lq.a.cpu(), lq.b.cpu()
        bias = export_bias(layers[k], sp)
        s = smooth.get(k)
        out[k] = {"weight": lq.weight.float().cpu(), "codes": lq.q.codes.to(torch.int16).cpu(),
                  "scale": lq.q.qparams.scale.cpu(),
                  "zero": lq.q.qparams.zero.cpu() if lq.q.qparams.zero is not None else torch.empty(0),
                  "group_size": torch.tensor(lq.q.qparams.group_size), "a": a, "b": b, "bias": bias,
                  "kernel_bias": kernel_bias(bias, a, b, None if s is None else s.cpu(), sp.a_shift,
                                             sp.torch_scale_dtype)}
    return out


def quantize_block(layers: dict[str, nn.Module], stats: dict[str, LayerStats], rots: dict[str, Rotation | None],
                   spec: LayerSpec | dict[str, LayerSpec], candidates: list[tuple[float, float]], smoothing: bool,
                   auto_rotate: bool, device, groups=()) -> dict:
    """Smoothing search, branch + GPTQ and errors for one block's layers (the one-shot per-layer functions)."""
    searched = smoothing or any(r is not None for r in rots.values())
    found = search_all_smoothing(layers, stats, rots, spec, candidates, auto_rotate=auto_rotate,
                                 device=device, groups=groups) if searched else {}
    scales, rotated, log = smoothing_record(found)
    scales = scales if smoothing else {}
    chosen = {k: (rots.get(k) if k in rotated else None) for k in layers}
    saved, rows, fallbacks = quantize_and_report(layers, stats, scales, chosen, spec, device=device, groups=groups)
    return {"smooth": scales, "qlayers": saved, "rotated": rotated, "log": log, "layers": rows,
            "fallbacks": fallbacks}
