"""The run's per-layer decisions, from the config: the one place a layer's format is decided (scheme rules and
their resolution), plus what follows from the formats (each layer's algorithm spec, which layers share a branch,
which layers are quantized, their byte costs).

Rules, in order (the last that matches a layer wins, ``algorithms/scheme.py::resolve``):
1. ``*``: the run's format (``quant.wgts`` / ``quant.ipts`` / ``low_rank.rank``; rotation when ``quant.rotation``);
2. ``quant.ipts.gelu_shift``: the layers after GELU (``sam2/variants.py::GELU_INPUT_LAYERS``) read input + 0.171875
   with the unsigned twin of the activation format, never rotated;
3. ``quant.mixed``: the fallback layers at W8A8 (derived from the layer's scheme: its rotation policy kept) or
   float. Their names are known before calibration in sequential mode (``quant.mixed.layers``)
   and after the mixed stage otherwise (its choice, ``fallback_layers``).

The mixed stage stores the resolved schemes of the layers a run ships (``scheme.json``, copied into the output
tree); the readers take them from there. Adding a format: docs/ARCHITECTURE.md, "How to add a quantization
format". No torch import (``layer_spec`` imports the recipe when called).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .algorithms.mixed_precision import weight_bytes
from .algorithms.scheme import GELU_SHIFT, LayerScheme, SchemeRule, matches, resolve
from .config import QuantCfg, RunConfig, group_size_of
from .sam2.variants import GELU_INPUT_LAYERS, linear_shapes, shared_input_groups

if TYPE_CHECKING:
    from .algorithms.layer_recipe import LayerSpec

__all__ = ["base_scheme", "scheme_rules", "calibration_schemes", "shipped_schemes", "layer_spec", "layer_specs",
           "layer_groups", "quantized_shapes", "layer_costs", "schemes_json", "read_schemes"]


def base_scheme(q: QuantCfg) -> LayerScheme:
    """The run's format for every layer no other rule names."""
    lr = q.wgts.low_rank
    s = LayerScheme(q.wgts.dtype, group_size_of(q.wgts.group_shapes), q.ipts.dtype,
                    group_size_of(q.ipts.group_shapes), 0.0, q.rotation is not None, lr.rank if lr is not None else 0)
    return s.static8() if q.ipts.static else s


def scheme_rules(q: QuantCfg, fallback_layers: Iterable[str] | None = None) -> list[SchemeRule]:
    """The rules of the run. ``fallback_layers``: mixed precision's chosen layers (names or patterns); None takes
    ``quant.mixed.layers``, the choice made before calibration (sequential mode) or recorded by an export."""
    base = base_scheme(q)
    rules = [SchemeRule(("*",), base, why="quant.wgts / quant.ipts / quant.wgts.low_rank / quant.rotation")]
    if q.ipts.gelu_shift:
        rules.append(SchemeRule(GELU_INPUT_LAYERS, base.shifted(GELU_SHIFT), why="quant.ipts.gelu_shift"))
    m = q.mixed
    targets = tuple(m.layers if fallback_layers is None else fallback_layers) if m is not None else ()
    if targets:
        rules.append(SchemeRule(targets, derive=m.fallback, why=f"quant.mixed (fallback {m.fallback})"))
    return rules


def calibration_schemes(q: QuantCfg, names: Iterable[str]) -> dict[str, LayerScheme]:
    """What calibration quantizes each layer at: the run's format (shifted after GELU); in sequential mode also the
    fallbacks of ``quant.mixed.layers`` (the block walk quantizes them at W8A8 or runs them in float). One-shot
    calibration quantizes every layer at the run's format; the mixed stage re-quantizes its chosen fallbacks."""
    return resolve(scheme_rules(q, None if q.calib.mode == "sequential" else ()), names)


def shipped_schemes(q: QuantCfg, names: Iterable[str], fallback_layers: Iterable[str] = ()) -> dict[str, LayerScheme]:
    """The schemes of the layers a run ships, with mixed precision's chosen ``fallback_layers``."""
    return resolve(scheme_rules(q, tuple(fallback_layers)), names)


def layer_spec(q: QuantCfg, seed: int) -> "LayerSpec":
    """The algorithm settings of the wgts / low_rank / kernel_gptq config (GPTQ, branch fit, seed, scale dtype), at
    the run's base format; ``layer_specs`` gives each layer its scheme's formats. A switched-off part (no branch,
    RTN instead of GPTQ) contributes nothing: its settings would not be read."""
    from .algorithms.layer_recipe import LayerSpec, spec_for
    w, g, lr = q.wgts, q.wgts.kernel_gptq, q.wgts.low_rank
    branch = dict(lowrank_iters=lr.num_iters, randomized_svd=lr.randomized) if lr else {}
    gptq = dict(block_size=g.block_size, damp_percentage=g.damp_percentage, num_inv_tries=g.num_inv_tries,
                act_order=g.act_order) if g else {}
    return spec_for(base_scheme(q), LayerSpec(w_dtype=w.dtype, gptq=g is not None, seed=seed,
                                              scale_dtype=w.scale_dtype, static_method=q.ipts.static_method,
                                              **branch, **gptq))


def layer_specs(q: QuantCfg, seed: int, schemes: dict[str, LayerScheme]) -> dict[str, "LayerSpec"]:
    """Each layer's spec: the run's algorithm settings with the formats of its scheme."""
    from .algorithms.layer_recipe import spec_for
    settings = layer_spec(q, seed)
    return {n: spec_for(s, settings) for n, s in schemes.items()}


def layer_groups(q: QuantCfg, names) -> list[tuple[str, str]]:
    """Layers that share one branch down-projection (``low_rank.exclusive: false``, as DeepCompressor): those that
    read the same input; none without a branch or with ``exclusive: true``."""
    lr = q.wgts.low_rank
    return shared_input_groups(names) if lr is not None and lr.rank > 0 and not lr.exclusive else []


def quantized_shapes(c: RunConfig) -> dict[str, tuple[int, int]]:
    """{layer: (in, out)} of every trunk linear the run quantizes (the variant table minus ``quant.skip``)."""
    return {k: v for k, v in linear_shapes(c.model.name, c.model.arch).items()
            if not any(matches(p, k) for p in c.quant.skip)}


def layer_costs(q: QuantCfg, shapes: dict[str, tuple[int, int]]) -> tuple[dict, dict, dict]:
    """({layer: parameters}, {layer: bytes at its scheme}, {layer: bytes at its fallback's scheme}) for (in, out)
    shapes: codes, 16-bit scales/zeros and branch as shipped (``LayerScheme.weight_format``)."""
    schemes = shipped_schemes(q, shapes)
    kind = q.mixed.fallback if q.mixed is not None else "w8a8"
    fb = {k: getattr(s, kind)() for k, s in schemes.items()}  # as the fallback rule derives it
    return ({k: i * o for k, (i, o) in shapes.items()},
            {k: weight_bytes(i, o, schemes[k].weight_format()) for k, (i, o) in shapes.items()},
            {k: weight_bytes(i, o, fb[k].weight_format()) for k, (i, o) in shapes.items()})


def schemes_json(schemes: dict[str, LayerScheme], rules: list[SchemeRule]) -> dict:
    """What ``scheme.json`` holds: the rules (for people) and every layer's resolved scheme (for readers)."""
    return {"rules": [r.to_dict() for r in rules], "layers": {k: s.to_dict() for k, s in schemes.items()}}


def read_schemes(d: dict) -> dict[str, LayerScheme]:
    return {k: LayerScheme.from_dict(v) for k, v in d["layers"].items()}
