"""What stages load at run time: the device, the float model (checked against its fetched hash), the run dtype,
and the inputs of the per-layer stages. Heavy libraries are imported here, when a stage needs them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..algorithms.layer_recipe import LayerSpec, shifted_spec
from ..algorithms.model_recipe import layer_rotations
from ..config import QuantCfg, RunConfig, group_size_of
from ..sam2.loading import DTYPES, after_gelu, load_model, quantizable_linears, shared_input_groups, weights_sha256
from .artifacts import ActivationStats, FetchedModel, RotationSpec, SmoothingChoice
from .progress import run_logger
from .stages import StageError

__all__ = ["device_of", "FPModel", "load_fp_model", "to_run_dtype", "layer_spec", "layer_specs", "layer_rots",
           "layer_groups", "LayerInputs", "chosen_rotations",
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


def layer_spec(q: QuantCfg, seed: int) -> LayerSpec:
    """The flat per-layer view of the wgts / ipts / low_rank / kernel_gptq config. A switched-off part (no branch,
    RTN instead of GPTQ) contributes nothing: its settings would not be read."""
    w, g, lr = q.wgts, q.wgts.kernel_gptq, q.wgts.low_rank
    branch = dict(rank=lr.rank, lowrank_iters=lr.num_iters, randomized_svd=lr.randomized) if lr else dict(rank=0)
    gptq = dict(block_size=g.block_size, damp_percentage=g.damp_percentage, num_inv_tries=g.num_inv_tries,
                act_order=g.act_order) if g else {}
    return LayerSpec(w_dtype=w.dtype, w_group=group_size_of(w.group_shapes), a_dtype=q.ipts.dtype,
                     a_group=group_size_of(q.ipts.group_shapes), gptq=g is not None, seed=seed,
                     scale_dtype=w.scale_dtype, **branch, **gptq)


def fallback_spec(q: QuantCfg, seed: int) -> LayerSpec:
    """Mixed precision's W8A8 fallback: sint8 per-channel weights (GPTQ when it is on), sint8 per-token
    activations, no branch, no shift."""
    from dataclasses import replace
    return replace(layer_spec(q, seed), w_dtype="sint8", w_group=-1, a_dtype="sint8", a_group=-1, rank=0)


def mark_fallback(saved: dict, spec: LayerSpec) -> dict:
    """A saved layer quantized at ``spec`` (``fallback_spec``) records its own activation format and bits, so
    QuantLinear and the readers use them instead of the run's."""
    saved.update(a_dtype=spec.a_dtype, a_group=spec.a_group, bits=int(spec.w_dtype[-1]))
    return saved


def layer_specs(q: QuantCfg, seed: int, names) -> LayerSpec | dict[str, LayerSpec]:
    """One spec for every layer, or, with ``ipts.gelu_shift``, the shifted unsigned spec for layers after GELU."""
    spec = layer_spec(q, seed)
    if not q.ipts.gelu_shift:
        return spec
    return {n: shifted_spec(spec) if after_gelu(n) else spec for n in names}


def layer_groups(q: QuantCfg, names) -> list[tuple[str, str]]:
    """Layers that share one branch down-projection (``low_rank.exclusive: false``, as DeepCompressor): those that
    read the same input; none without a branch or with ``exclusive: true``."""
    lr = q.wgts.low_rank
    return shared_input_groups(names) if lr is not None and lr.rank > 0 and not lr.exclusive else []


def layer_rots(q: QuantCfg, layers: dict, by_width: dict) -> dict:
    """Each layer's candidate rotation; none for shifted (unsigned-input) layers, which a rotation would spoil."""
    rots = layer_rotations(layers, by_width)
    return {k: None if q.ipts.gelu_shift and after_gelu(k) else r for k, r in rots.items()}


@dataclass
class LayerInputs:
    """What the per-layer stages work on: the float model, its trunk linears, their statistics and each layer's
    candidate rotation (None where rotation is off)."""
    fp: FPModel
    layers: dict
    stats: dict
    rots: dict
    by_width: dict


def load_layer_inputs(cfg: RunConfig, fetched: FetchedModel, acts: ActivationStats, rot: RotationSpec) -> LayerInputs:
    fp = load_fp_model(cfg, fetched)
    stats = acts.stats()
    layers = {k: v for k, v in quantizable_linears(fp.model, cfg.quant.skip).items() if k in stats}
    by_width = rot.matrices()
    return LayerInputs(fp, layers, stats, layer_rots(cfg.quant, layers, by_width), by_width)


def chosen_rotations(li: LayerInputs, smooth: SmoothingChoice, names=None) -> dict:
    """The rotation of each layer (of ``names``, default all) as the smooth stage chose it."""
    layers = li.layers if names is None else {k: li.layers[k] for k in names}
    chosen = set(smooth.rotation_choice()["layers"])
    return layer_rotations(layers, li.by_width, {k: k in chosen for k in layers})
