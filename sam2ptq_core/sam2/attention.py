"""Static int8 Q·Kᵀ in Hiera's attention (``quant.ipts.attention``): the attention matmul's two inputs quantized
per tensor (sint8, zero point 0) through ``qdq.quantize_dequantize``, so the traced graph holds QuantizeLinear →
DequantizeLinear on query and key before their MatMul and graph runtimes run Q·Kᵀ in int8 (NNCF's transformer
preset quantizes it too). Softmax and P·V stay float.

transformers' ``Sam2MultiScaleAttention`` calls the attention function its config names
(``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation)``) and passes itself in. ``attach`` gives a
trunk's attention modules a ``QKQuant`` (attribute ``qk_quant``) and switches the trunk's config to ``IMPL``,
registered here: a module whose QKQuant has parameters quantizes query and key, then runs transformers' eager
attention (softmax(Q·Kᵀ·scale)·V, the MatMul runtimes quantize); a module observing its inputs, or without one, runs
the attention the config named before (sdpa), unchanged. Names: ``<module>.query`` and ``<module>.key``, e.g.
``blocks.3.attn.query``, beside the linears' in ``ranges.json``.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.sam2.modeling_sam2 import eager_attention_forward

from ..algorithms.qdq import RangeObserver, quantize_dequantize, static_params
from ..algorithms.quantizers import QParams
from .loading import trunk

__all__ = ["IMPL", "TENSORS", "QKQuant", "attention_modules", "attach", "observe", "set_static"]

IMPL = "sam2ptq_qk"
TENSORS = ("query", "key")


class QKQuant(nn.Module):
    """Query and key of one attention module: observed (``observers``) or quantized with static per-tensor
    parameters (``set_static``); the float attention implementation it falls back to is ``base``."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base
        self.observers: dict[str, RangeObserver] | None = None
        for t in TENSORS:
            self.register_buffer(f"{t}_scale", None)
            self.register_buffer(f"{t}_zero", None)

    @property
    def static(self) -> bool:
        return self.query_scale is not None

    def set_static(self, query: QParams, key: QParams) -> None:
        for t, qp in zip(TENSORS, (query, key)):
            s, z = static_params(qp)
            setattr(self, f"{t}_scale", s)
            setattr(self, f"{t}_zero", z)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.observers is not None:
            self.observers["query"](query)
            self.observers["key"](key)
        if not self.static:
            return query, key
        return (quantize_dequantize(query, self.query_scale.to(query.device), self.query_zero.to(query.device)),
                quantize_dequantize(key, self.key_scale.to(key.device), self.key_zero.to(key.device)))


def _attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kw):
    qk = getattr(module, "qk_quant", None)
    if qk is None or not qk.static:
        if qk is not None:
            qk(query, key)  # observing: record, then the float attention unchanged
        fn = ALL_ATTENTION_FUNCTIONS.get_interface(qk.base if qk is not None else "sdpa", eager_attention_forward)
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kw)
    # transformers' eager attention with the MatMul's inputs quantized: key transposed first, so that the graph
    # reads Transpose → Q → DQ → MatMul (ONNX Runtime's transpose optimizer fails on a Transpose after the DQ)
    query, key_t = qk(query, key.transpose(2, 3))
    w = torch.matmul(query, key_t) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


AttentionInterface.register(IMPL, _attention)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The trunk's attention modules (``Sam2MultiScaleAttention``), by trunk name (``blocks.<i>.attn``)."""
    return {n: m for n, m in trunk(model).named_modules() if type(m).__name__ == "Sam2MultiScaleAttention"}


def attach(model: nn.Module) -> dict[str, QKQuant]:
    """A ``QKQuant`` on every trunk attention module (in place; kept if already there), the trunk's config switched
    to ``IMPL``. Returns them by module name."""
    mods = attention_modules(model)
    got = {}
    for n, m in mods.items():
        if getattr(m, "qk_quant", None) is None:
            base = m.config._attn_implementation
            m.qk_quant = QKQuant("sdpa" if base == IMPL else base)
        got[n] = m.qk_quant
    for m in mods.values():
        m.config._attn_implementation = IMPL
    return got


def observe(model: nn.Module, seed: int = 0) -> dict[str, RangeObserver]:
    """Observers on every trunk attention module's query and key ({``<module>.query``: observer, …}); run
    calibration images through the model, then ``set_static``."""
    obs = {}
    for i, (n, qk) in enumerate(attach(model).items()):
        qk.observers = {t: RangeObserver(seed=seed + 7919 + 2 * i + j) for j, t in enumerate(TENSORS)}
        obs.update({f"{n}.{t}": o for t, o in qk.observers.items()})
    return obs


def set_static(model: nn.Module, qparams: dict[str, QParams]) -> int:
    """Every trunk attention module with ``<module>.query`` and ``.key`` entries in ``qparams`` quantizing them
    (in place), observers removed; returns how many. A model with no such entries is left as it is."""
    mods = attention_modules(model)
    names = [n for n in mods if f"{n}.query" in qparams]
    if names:
        attach(model)
    for n, m in mods.items():
        qk = getattr(m, "qk_quant", None)
        if qk is not None:
            qk.observers = None
            if n in names:
                qk.set_static(qparams[f"{n}.query"], qparams[f"{n}.key"])
    return len(names)
