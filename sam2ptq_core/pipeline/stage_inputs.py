"""What stages load at run time (not a graph runtime: those are ``export/runtimes``): the device, the float model
(checked against its fetched hash), the run dtype, and the inputs of the per-layer stages. Heavy libraries are
imported here, when a stage needs them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..algorithms.model_recipe import layer_rotations
from ..algorithms.scheme import LayerScheme
from ..config import RunConfig
from ..sam2.loading import DTYPES, load_model, quantizable_linears, weights_sha256
from ..schemes import calibration_schemes
from .artifacts import ActivationStats, FetchedModel, RotationSpec, SmoothingChoice
from .progress import run_logger
from .stages import StageError

__all__ = ["device_of", "FPModel", "load_fp_model", "to_run_dtype", "layer_rots", "LayerInputs", "chosen_rotations",
           "load_layer_inputs"]


def device_of(cfg: RunConfig) -> torch.device:
    if cfg.model.device == "cuda" and not torch.cuda.is_available():
        raise StageError("model.device is cuda but no CUDA device is available; use --model.device cpu")
    return torch.device(cfg.model.device)


@dataclass
class FPModel:
    model: nn.Module
    random_weights: bool
    source: str


def load_fp_model(cfg: RunConfig, fetched: FetchedModel) -> FPModel:
    """Rebuild/load the float model recorded by fetch_model and check it is bit-for-bit the same weights."""
    meta = fetched.meta
    lm = load_model(cfg.model.name, path=meta.get("path", ""), revision=cfg.model.revision,
                    random_init=cfg.model.random_init, seed=cfg.seed, image_size=cfg.quant.calib.image_size,
                    arch=cfg.model.arch)
    if weights_sha256(lm.model) != meta["weights_sha256"]:
        raise StageError("fetch_model: the model weights changed since they were fetched; clear the cache entry")
    return FPModel(lm.model, lm.random_weights, lm.source)


def to_run_dtype(model: nn.Module, cfg: RunConfig) -> nn.Module:
    dt = DTYPES[cfg.model.dtype]
    if cfg.model.device == "cpu" and dt == torch.float16:
        run_logger().warning("model.dtype float16 on CPU runs in float32 (CPU float16 kernels are missing or slow); "
                             "use --model.dtype bfloat16 or float32 to silence this")
        dt = torch.float32
    return model.to(device=device_of(cfg), dtype=dt)


def layer_rots(layers: dict, by_width: dict, schemes: dict[str, LayerScheme]) -> dict:
    """Each layer's candidate rotation: none where its scheme takes none (shifted, unsigned-input layers)."""
    rots = layer_rotations(layers, by_width)
    return {k: r if schemes[k].rotate else None for k, r in rots.items()}


@dataclass
class LayerInputs:
    """What the per-layer stages work on: the float model, its trunk linears, their statistics and each layer's
    candidate rotation (None where rotation is off)."""
    fp: FPModel
    layers: dict
    stats: dict
    rots: dict
    by_width: dict
    schemes: dict  # {layer: LayerScheme} as calibration quantizes it (schemes.calibration_schemes)


def load_layer_inputs(cfg: RunConfig, fetched: FetchedModel, acts: ActivationStats, rot: RotationSpec) -> LayerInputs:
    fp = load_fp_model(cfg, fetched)
    stats = acts.stats()
    layers = {k: v for k, v in quantizable_linears(fp.model, cfg.quant.skip).items() if k in stats}
    by_width = rot.matrices()
    schemes = calibration_schemes(cfg.quant, layers)
    return LayerInputs(fp, layers, stats, layer_rots(layers, by_width, schemes), by_width, schemes)


def chosen_rotations(li: LayerInputs, smooth: SmoothingChoice, names=None) -> dict:
    """The rotation of each layer (of ``names``, default all) as the smooth stage chose it."""
    layers = li.layers if names is None else {k: li.layers[k] for k in names}
    chosen = set(smooth.rotation_choice()["layers"])
    return layer_rotations(layers, li.by_width, {k: k in chosen for k in layers})
