"""A torchao path for PyTorch users: the encoder's W8A8 layers as torchao ``Int8Tensor`` weights built from the
pipeline's own codes and scales (never re-quantized by torchao), so ``F.linear`` runs torchao's int8 kernel
(``int_scaled_matmul``; usable under ``torch.compile``, fastest on GPUs).

A layer converts when its scheme is W8A8: sint8 per-channel weights (zero point 0) and dynamic sint8 per-token
activations, no input shift (mixed precision's W8A8 fallbacks and the W8A8 configs). Smoothing becomes torchao's
``act_pre_scale`` (x · 1/s before quantization); a Hadamard rotation, when the layer has one, and the low-rank
branch stay in torch around it. torchao quantizes the activations itself, dynamically per row, with its own
convention: scale = max|x| / 127.5, codes in [-128, 127] (ours: max|x| / 127, codes in [-127, 127]); the codes can
therefore differ by one step, which tests/test_torchao.py bounds against a float64 model of torchao's documented
semantics and against QuantLinear. Other layers keep their QuantLinear. The ``'.[torchao]'`` extra.
"""
from __future__ import annotations

import torch
from torch import nn

from ..algorithms.scheme import LayerScheme
from ..sam2.loading import trunk
from ..sam2.quantized_model import QuantLinear
from .runtimes import MissingRuntime

__all__ = ["TorchaoLinear", "converts", "to_torchao"]


def converts(scheme: LayerScheme) -> bool:
    """Whether torchao's Int8Tensor runs this layer as the pipeline quantized it (W8A8, per token, no shift)."""
    return (scheme.w_dtype == "sint8" and scheme.w_group <= 0 and scheme.a_dtype == "sint8" and scheme.a_group <= 0
            and not scheme.shift and not scheme.a_static)


def _torchao():
    try:
        from torchao.quantization import Int8Tensor
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quant_primitives import MappingType
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs
    except ImportError:
        raise MissingRuntime("torchao is not installed; install the extra: pip install -e '.[torchao]'") from None
    return Int8Tensor, PerRow, MappingType, QuantizeTensorToInt8Kwargs


class TorchaoLinear(nn.Module):
    """y = Int8Tensor-linear(x·R, act_pre_scale 1/s) + ((x·R)/s · aᵀ)·bᵀ, from a QuantLinear and its saved codes."""

    def __init__(self, ql: QuantLinear, saved: dict):
        super().__init__()
        if not converts(ql.scheme):
            raise ValueError(f"torchao's int8 path needs a W8A8 per-token layer, not {ql.scheme.label()}")
        Int8Tensor, PerRow, MappingType, Kwargs = _torchao()
        codes, scale = saved["codes"], saved["scale"]
        if saved["zero"].numel() or scale.shape[1] != 1:
            raise ValueError("torchao's Int8Tensor takes symmetric per-channel weights")
        dev = ql.weight.device
        pre = None if ql.smooth is None else (1.0 / ql.smooth.float()).to(dev)
        w = Int8Tensor(codes.to(device=dev, dtype=torch.int8), scale.float().to(dev).reshape(-1, 1),
                       [1, codes.shape[1]], torch.float32, act_pre_scale=pre,
                       act_quant_kwargs=Kwargs(granularity=PerRow(), mapping_type=MappingType.SYMMETRIC))
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = ql.bias
        self.rotation, self.smooth = ql.rotation, ql.smooth
        self.lora_a, self.lora_b = ql.lora_a, ql.lora_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr = self.rotation.apply(x) if self.rotation is not None else x
        y = nn.functional.linear(xr, self.weight, self.bias)
        if self.lora_a is not None:
            xb = xr / self.smooth.to(x.dtype) if self.smooth is not None else xr
            y = y + nn.functional.linear(nn.functional.linear(xb, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return y


def to_torchao(model: nn.Module, qlayers: dict[str, dict]) -> int:
    """Swap (in place) every W8A8 QuantLinear of ``model`` for its TorchaoLinear; returns how many."""
    root, n = trunk(model), 0
    for name, mod in list(root.named_modules()):
        if isinstance(mod, QuantLinear) and converts(mod.scheme):
            parent, leaf = name.rsplit(".", 1)
            setattr(root.get_submodule(parent), leaf, TorchaoLinear(mod, qlayers[name]))
            n += 1
    return n
