"""The quantized forward's integer steps as two torch ops with ONNX's semantics, so that the eager forward is what
the exporter lowers (one definition of the quantized math, as NNCF's FakeQuantize or torchao's tensor subclasses).

- ``sam2ptq::dequantize_linear(codes, scale, zero, axis, block_size, bits)``: ONNX ``DequantizeLinear`` (opset 21):
  y = (codes − zero)·scale (``zero`` None: 0, the zero point left out), per tensor (scale 0-d), per axis (scale
  1-d along ``axis``) or blocked (scale of the codes' rank, ``block_size`` codes along ``axis`` per scale).
  ``bits`` 4: the codes are int4/uint4 values held in int8/uint8 (the export stores them as 4-bit).
- ``sam2ptq::quantize_dequantize(x, scale, zero)``: ONNX ``QuantizeLinear`` → ``DequantizeLinear`` per tensor:
  q = saturate(round_half_even(x / scale) + zero) to int8 [−128, 127] or uint8 [0, 255] by ``zero``'s dtype, then
  (q − zero)·scale.

``PackedWeight`` holds a layer's codes in that form ([in, out], so the exported graph is DequantizeLinear → MatMul);
``RangeObserver`` records the tensor a QuantLinear feeds its activation quantizer (prepare → calibrate → convert,
as PT2E does) and ``static_qparams`` turns what it saw into per-tensor uint8 parameters (min–max or the MSE-best
clipped range). The ONNX translations of the two ops live in ``export/onnx_graph.py``.
"""
from __future__ import annotations

import torch
from torch import nn

from .quantizers import QParams, range_qparams

__all__ = ["dequantize_linear", "quantize_dequantize", "PackedWeight", "RangeObserver", "static_qparams",
           "static_params", "ranges_qparams", "STATIC_DTYPE"]

STATIC_DTYPE = "uint8"  # static activations: asymmetric per tensor, the runtimes' u8 with a zero point


@torch.library.custom_op("sam2ptq::dequantize_linear", mutates_args=())
def dequantize_linear(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int,
                      block_size: int, bits: int) -> torch.Tensor:
    if zero is None:  # ONNX's absent zero point: 0 (symmetric signed codes)
        zero = torch.zeros_like(scale, dtype=codes.dtype)
    if scale.ndim == 0:
        return (codes.to(scale.dtype) - zero.to(scale.dtype)) * scale
    shape = [1] * codes.ndim
    if block_size:  # scale [.., ceil(n / block), ..] along axis: repeat each scale over its block
        n = codes.shape[axis]
        s = scale.repeat_interleave(block_size, dim=axis).narrow(axis, 0, n)
        z = zero.repeat_interleave(block_size, dim=axis).narrow(axis, 0, n)
        return (codes.to(scale.dtype) - z.to(scale.dtype)) * s
    shape[axis] = -1
    return (codes.to(scale.dtype) - zero.to(scale.dtype).reshape(shape)) * scale.reshape(shape)


@dequantize_linear.register_fake
def _(codes, scale, zero, axis, block_size, bits):
    return torch.empty(codes.shape, dtype=scale.dtype, device=codes.device)


@torch.library.custom_op("sam2ptq::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    lo, hi = (-128, 127) if zero.dtype == torch.int8 else (0, 255)
    s, z = scale.to(x.dtype), zero.to(x.dtype)
    return ((torch.round(x / s) + z).clamp(lo, hi) - z) * s


@quantize_dequantize.register_fake
def _(x, scale, zero):
    return torch.empty_like(x)


_CODE_DTYPE = {True: torch.int8, False: torch.uint8}


class PackedWeight(nn.Module):
    """A layer's weight as codes for ``dequantize_linear``, transposed to [in, out]: per output channel (axis 1),
    or input-channel groups as blocks along axis 0. A ragged last group (Hiera's 96 inputs in groups of 64) is its
    own per-channel part, concatenated after the full blocks (OpenVINO needs the blocked axis to be a multiple of
    the block). ``forward()`` returns the dequantized weight [in, out], equal to ``dequantize`` of the codes."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group_size: int,
                 signed: bool, bits: int):
        super().__init__()
        ct = _CODE_DTYPE[signed]
        c, s = codes.T.contiguous(), scale.float().T.contiguous()  # [in, out], [groups, out]
        z = (zero.T.contiguous() if zero is not None and zero.numel() else torch.zeros_like(s)).round()
        n_in, g = c.shape[0], int(group_size)
        self.bits, self.parts = bits, []
        if s.shape[0] == 1:
            self._part("w", c, s[0], z[0], 1, 0, ct)
        else:
            full = n_in // g
            self._part("w", c[:full * g], s[:full], z[:full], 0, g, ct)
            if full * g < n_in:
                self._part("w_tail", c[full * g:], s[full], z[full], 1, 0, ct)

    def _part(self, name: str, c, s, z, axis: int, block: int, ct: torch.dtype) -> None:
        self.register_buffer(f"{name}_codes", c.to(ct))
        self.register_buffer(f"{name}_scale", s.contiguous())
        # signed codes are symmetric: no zero point (an all-zero one would be an initializer the exporter shares
        # between layers, and ONNX Runtime's s8→u8 weight transform, on with session.x64quantprecision, then
        # fails to start the session converting it twice: "Attempt to replace the existing tensor")
        self.register_buffer(f"{name}_zero", None if ct == torch.int8 else z.to(ct).contiguous())
        self.parts.append((name, axis, block))

    def forward(self) -> torch.Tensor:
        outs = [dequantize_linear(getattr(self, f"{n}_codes"), getattr(self, f"{n}_scale"),
                                  getattr(self, f"{n}_zero"), axis, block, self.bits)
                for n, axis, block in self.parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def static_params(qp: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) 0-d tensors for ``quantize_dequantize`` from per-tensor uint8 parameters."""
    return qp.scale.reshape(()).float(), qp.zero.reshape(()).round().to(torch.uint8)


def _mse(v: torch.Tensor, lo: float, hi: float) -> float:
    scale, zero = static_params(range_qparams(lo, hi, STATIC_DTYPE))
    return float((quantize_dequantize(v, scale, zero) - v).pow(2).sum(dtype=torch.float64))


def static_qparams(lo: float, hi: float, sample: torch.Tensor | None, method: str = "mse") -> QParams:
    """Per-tensor uint8 parameters for a tensor whose values span [lo, hi]: ``minmax`` that range; ``mse`` the
    clipped range [lo·t_lo, hi·t_hi] (t from 1 down to 0.3 in steps of 0.01, each end in turn, twice) with the least
    squared quantization error on ``sample`` (values of the tensor; the exact ends stay candidates, so a range is
    never clipped where the sample says it should not be)."""
    if method == "minmax" or sample is None or not sample.numel():
        return range_qparams(lo, hi, STATIC_DTYPE)
    v = sample.float().reshape(-1)
    ts = [1 - 0.01 * i for i in range(71)]
    best_lo, best_hi = lo, hi
    for _ in range(2):
        best_hi = min((hi * t for t in ts if hi * t > best_lo), key=lambda h: _mse(v, best_lo, h), default=hi)
        best_lo = min((lo * t for t in ts if lo * t < best_hi), key=lambda m: _mse(v, m, best_hi), default=lo)
    return range_qparams(best_lo, best_hi, STATIC_DTYPE)


class RangeObserver:
    """Records a tensor across calls: its exact min and max, and a seeded sample of its values (at most
    ``per_call`` per call, ``max_values`` in all, kept by reservoir) for the MSE range search."""

    def __init__(self, per_call: int = 8192, max_values: int = 1 << 17, seed: int = 0):
        self.lo, self.hi, self.seen = float("inf"), float("-inf"), 0
        self.per_call, self.max_values = per_call, max_values
        self.gen = torch.Generator().manual_seed(seed)
        self.sample = torch.empty(0)

    def __call__(self, x: torch.Tensor) -> None:
        v = x.detach().reshape(-1).float().cpu()
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        take = v[torch.randint(0, v.numel(), (min(self.per_call, v.numel()),), generator=self.gen)]
        self.seen += 1
        room = self.max_values - self.sample.numel()
        if room > 0:
            self.sample = torch.cat([self.sample, take[:room]])
            take = take[room:]
        if take.numel():  # reservoir: each new value replaces a kept one with the probability it should
            keep = torch.rand(take.numel(), generator=self.gen) < self.max_values / (self.per_call * self.seen)
            idx = torch.randint(0, self.max_values, (int(keep.sum()),), generator=self.gen)
            self.sample[idx] = take[keep]

    def qparams(self, method: str = "mse") -> QParams:
        if self.seen == 0:
            raise ValueError("the observer saw no values: run calibration images through the prepared model")
        return static_qparams(self.lo, self.hi, self.sample, method)


def ranges_qparams(info: dict) -> dict[str, QParams]:
    """{layer: QParams} (uint8 per tensor) from a ``ranges.json`` dict ({"layers": {name: {"scale", "zero"}}})."""
    return {k: QParams(torch.tensor([[v["scale"]]], dtype=torch.float32), torch.tensor([[float(v["zero"])]]), -1)
            for k, v in info.get("layers", {}).items()}
