"""The quantized linear module and the swap that builds a quantized SAM2 from per-layer artifacts.

QuantLinear computes, for input x [..., in]:

    x' = ((x + shift) · R) / smooth             (R = Hadamard, applied by the fast transform; smoothing acts in
                                                 the rotated basis, as in DeepCompressor; shift ≠ 0 only for an
                                                 unsigned-activation layer, which is never rotated)
    y  = Qa(x') · weightᵀ + ((x · R) / smooth · aᵀ) · bᵀ + bias

``weight`` is the dequantized (fake-quant) residual, exactly (code − zero) · scale; the low-rank branch runs on the
unquantized input, *unshifted*, as nunchaku's kernel feeds it (its GELU kernel adds the shift only to what it
quantizes); Qa is dynamic per-token group quantization in the layer's scheme (``algorithms/scheme.py``: the
run's ``ipts``, its unsigned twin on a shifted input, sint8 per token for a W8A8 fallback). ``bias`` is the bias
the kernel adds: for a shifted layer −shift·W·1 is folded in and, with a branch, +b·(a / smooth)·shift·1
(``layer_recipe.kernel_bias``), so the output equals the shifted layer's exactly in real arithmetic.
The module keeps a float ``.weight`` so that code reading ``module.weight.dtype`` keeps working.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..algorithms.layer_recipe import quantized_linear
from ..algorithms.qdq import PackedWeight, RangeObserver, static_params
from ..algorithms.quantizers import QParams
from ..algorithms.rotation import Rotation
from ..algorithms.scheme import LayerScheme
from .loading import quantizable_linears, trunk

__all__ = ["QuantLinear", "LayerArtifacts", "quantize_model", "artifacts_from_saved", "build_quantized", "swapped",
           "quant_linears", "prepare_static", "convert_static", "pack_weights"]


@dataclass
class LayerArtifacts:
    """Everything one quantized linear needs (tensors on CPU, float32): its ``scheme`` (activation format and
    group, input shift) and its tensors. ``bias`` is the bias the kernel adds (``kernel_bias`` of the stored
    layer); ``rotate`` whether the smooth stage kept the layer's rotation."""
    scheme: LayerScheme
    weight: torch.Tensor
    bias: torch.Tensor | None
    smooth: torch.Tensor | None
    a: torch.Tensor | None
    b: torch.Tensor | None
    rotate: bool = False
    rotate_random: bool = False
    rotate_seed: int = 0
    act_qparams: QParams | None = None  # a static-activation scheme's per-tensor parameters (``scheme.a_static``)


class QuantLinear(nn.Module):
    def __init__(self, art: LayerArtifacts):
        super().__init__()
        if not art.scheme.quantized:
            raise ValueError("a float (fp16 fallback) layer has no QuantLinear: keep the float module")
        self.scheme = art.scheme
        self.out_features, self.in_features = art.weight.shape
        self.weight = nn.Parameter(art.weight.clone(), requires_grad=False)
        self.bias = None if art.bias is None else nn.Parameter(art.bias.clone(), requires_grad=False)
        self.register_buffer("smooth", None if art.smooth is None else art.smooth.clone())
        has_branch = art.a is not None and art.a.numel() > 0
        self.register_buffer("lora_a", art.a.clone() if has_branch else None)
        self.register_buffer("lora_b", art.b.clone() if has_branch else None)
        self.rotation = Rotation(self.in_features, art.rotate_random, art.rotate_seed) if art.rotate else None
        self.packed: PackedWeight | None = None  # the weight as codes (``pack``): what the ONNX export traces
        self.observer: RangeObserver | None = None  # set while static activation ranges are calibrated
        self.register_buffer("a_scale", None)
        self.register_buffer("a_zero", None)
        if art.scheme.a_static and art.scheme.a_dtype:
            if art.act_qparams is None:
                raise ValueError("a static-activation scheme needs the layer's activation parameters (act_qparams)")
            self.set_static(art.scheme, art.act_qparams)

    def set_static(self, scheme: LayerScheme, qp: QParams) -> None:
        """Run ``scheme`` (static per-tensor activations) with parameters ``qp``."""
        self.scheme = scheme
        self.a_scale, self.a_zero = (t.to(self.weight.device) for t in static_params(qp))

    def pack(self, q: dict) -> None:
        """Compute the weight from its codes (``q``: the saved layer's codes, scale, zero, group_size), exactly
        ``self.weight``'s values, through ``qdq.dequantize_linear``."""
        from ..algorithms.scheme import qdtype
        qd = qdtype(self.scheme.w_dtype)
        self.packed = PackedWeight(q["codes"], q["scale"], q["zero"], q["group_size"], qd.signed, qd.bits).to(
            self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = self.scheme
        static = (self.a_scale, self.a_zero) if sc.a_static else None
        return quantized_linear(x, self.packed if self.packed is not None else self.weight, self.bias, self.smooth,
                                self.lora_a, self.lora_b, sc.a_dtype, sc.a_group, sc.shift, self.rotation, static,
                                self.observer)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, {self.scheme.label()}, "
                f"smooth={self.smooth is not None}, rotate={self.rotation is not None}")


def quantize_model(model: nn.Module, layers: dict[str, LayerArtifacts]) -> nn.Module:
    """Swap the named trunk linears of ``model`` (in place) for QuantLinear modules; returns the model."""
    known = quantizable_linears(model)
    missing = set(layers) - set(known)
    if missing:
        raise KeyError(f"artifacts name layers the model does not have: {sorted(missing)[:3]}")
    root = trunk(model)
    for name, art in layers.items():
        parent_name, leaf = name.rsplit(".", 1)
        parent = root.get_submodule(parent_name)
        old = getattr(parent, leaf)
        ql = QuantLinear(art).to(device=old.weight.device)
        setattr(parent, leaf, ql)
    return model


def artifacts_from_saved(qlayers: dict[str, dict], smooth: dict[str, torch.Tensor], rotation: dict,
                         schemes: dict[str, LayerScheme], act_qparams: dict[str, QParams] | None = None
                         ) -> dict[str, LayerArtifacts]:
    """LayerArtifacts from the stored per-layer dicts (weight, kernel_bias, a, b) and each layer's scheme.
    ``rotation``: {"random", "seed", "layers": [names of the rotated layers]}; ``act_qparams``: static activation
    parameters of the layers whose scheme is static."""
    arts = {}
    rotated = set(rotation.get("layers", []))
    for name, d in qlayers.items():
        bias = d["kernel_bias"] if d["kernel_bias"].numel() else None
        arts[name] = LayerArtifacts(schemes[name], d["weight"].float(), bias, smooth.get(name), d["a"], d["b"],
                                    rotate=name in rotated, rotate_random=rotation.get("random", False),
                                    rotate_seed=rotation.get("seed", 0),
                                    act_qparams=(act_qparams or {}).get(name) if schemes[name].a_static else None)
    return arts


def build_quantized(fp_model: nn.Module, qlayers: dict[str, dict], smooth: dict[str, torch.Tensor],
                    rotation: dict, schemes: dict[str, LayerScheme],
                    act_qparams: dict[str, QParams] | None = None) -> nn.Module:
    """A deep copy of the float model with its trunk linears swapped for QuantLinear from the stored artifacts
    (``act_qparams``: the static activation parameters, for static schemes)."""
    import copy

    from . import attention
    m = quantize_model(copy.deepcopy(fp_model), artifacts_from_saved(qlayers, smooth, rotation, schemes, act_qparams))
    attention.set_static(m, act_qparams or {})  # Q·Kᵀ when the ranges hold attention entries (quant.ipts.attention)
    return m


@contextmanager
def swapped(model: nn.Module, name: str, art: LayerArtifacts):
    """Trunk linear ``name`` of ``model`` replaced by its QuantLinear for the block, then restored."""
    parent_name, leaf = name.rsplit(".", 1)
    parent = trunk(model).get_submodule(parent_name)
    old = getattr(parent, leaf)
    setattr(parent, leaf, QuantLinear(art).to(device=old.weight.device, dtype=old.weight.dtype))
    try:
        yield
    finally:
        setattr(parent, leaf, old)


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """The QuantLinear modules of the model's trunk, by trunk name."""
    return {n: m for n, m in trunk(model).named_modules() if isinstance(m, QuantLinear)}


def prepare_static(model: nn.Module, seed: int = 0, attention: bool = False) -> dict[str, RangeObserver]:
    """Attach a ``RangeObserver`` to every QuantLinear with quantized activations (the tensor it feeds its
    activation quantizer) and, with ``attention``, to every attention module's query and key
    (``sam2/attention.py``: ``<module>.query``, ``<module>.key``); run calibration images through the model, then
    ``convert_static``."""
    obs = {}
    for i, (n, ql) in enumerate(quant_linears(model).items()):
        if ql.scheme.a_dtype is not None:
            ql.observer = obs[n] = RangeObserver(seed=seed + i)
    if attention:
        from . import attention as attn
        obs.update(attn.observe(model, seed))
    return obs


def convert_static(model: nn.Module, qparams: dict[str, QParams]) -> nn.Module:
    """Each named QuantLinear switched (in place) to its static scheme (``LayerScheme.static8``) with its
    parameters, and each attention module with ``<module>.query``/``.key`` entries quantizing Q·Kᵀ's inputs;
    observers removed. Returns the model."""
    from . import attention
    for n, ql in quant_linears(model).items():
        ql.observer = None
        if n in qparams:
            ql.set_static(ql.scheme.static8(), qparams[n])
    attention.set_static(model, qparams)
    return model


def pack_weights(model: nn.Module, qlayers: dict[str, dict]) -> nn.Module:
    """Every QuantLinear (in place) computing its weight from its saved codes; returns the model."""
    for n, ql in quant_linears(model).items():
        ql.pack(qlayers[n])
    return model
