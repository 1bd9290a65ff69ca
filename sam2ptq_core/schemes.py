"""The run's quantization scheme rules, from the config: the one place a layer's format is decided.

Rules, in order (the last that matches a layer wins, ``algorithms/scheme.py::resolve``):
1. ``*``: the run's format (``quant.wgts`` / ``quant.ipts`` / ``low_rank.rank``; rotation when ``quant.rotation``);
2. ``quant.ipts.gelu_shift``: the layers after GELU (``sam2/variants.py::GELU_INPUT_LAYERS``) read input + 0.171875
   with the unsigned twin of the activation format, never rotated;
3. ``quant.mixed``: the fallback layers at W8A8 (derived from the layer's scheme: its rotation policy kept) or
   float. Their names are known before calibration in sequential mode (``quant.mixed.layers``)
   and after the mixed stage otherwise (its choice, ``fallback_layers``).

The mixed stage stores the resolved schemes of the layers a run ships (``scheme.json``, copied into the output
tree); the readers take them from there. Adding a format means a new ``LayerScheme`` value and a rule here.
No torch import.
"""
from __future__ import annotations

from collections.abc import Iterable

from .algorithms.scheme import GELU_SHIFT, LayerScheme, SchemeRule, resolve
from .config import QuantCfg, group_size_of
from .sam2.variants import GELU_INPUT_LAYERS

__all__ = ["base_scheme", "scheme_rules", "calibration_schemes", "shipped_schemes", "schemes_json", "read_schemes"]


def base_scheme(q: QuantCfg) -> LayerScheme:
    """The run's format for every layer no other rule names."""
    lr = q.wgts.low_rank
    return LayerScheme(q.wgts.dtype, group_size_of(q.wgts.group_shapes), q.ipts.dtype,
                       group_size_of(q.ipts.group_shapes), 0.0, q.rotation is not None,
                       lr.rank if lr is not None else 0)


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


def schemes_json(schemes: dict[str, LayerScheme], rules: list[SchemeRule]) -> dict:
    """What ``scheme.json`` holds: the rules (for people) and every layer's resolved scheme (for readers)."""
    return {"rules": [r.to_dict() for r in rules], "layers": {k: s.to_dict() for k, s in schemes.items()}}


def read_schemes(d: dict) -> dict[str, LayerScheme]:
    return {k: LayerScheme.from_dict(v) for k, v in d["layers"].items()}
