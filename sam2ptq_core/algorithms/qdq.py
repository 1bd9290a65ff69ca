"""The quantized forward's integer steps as two torch ops with ONNX's semantics, so that the eager forward is what
the exporter lowers (one definition of the quantized math, as NNCF's FakeQuantize or torchao's tensor subclasses).

- ``sam2ptq::dequantize_linear(codes, scale, zero, axis, block_size, bits)``: ONNX ``DequantizeLinear`` (opset 21):
  y = (codes − zero)·scale, per tensor (scale 0-d), per axis (scale 1-d along ``axis``) or blocked (scale of the
  codes' rank, ``block_size`` codes along ``axis`` per scale). ``bits`` 4: the codes are int4/uint4 values held in
  int8/uint8 (the export stores them as 4-bit).
- ``sam2ptq::quantize_dequantize(x, scale, zero)``: ONNX ``QuantizeLinear`` → ``DequantizeLinear`` per tensor:
  q = saturate(round_half_even(x / scale) + zero) to int8 [−128, 127] or uint8 [0, 255] by ``zero``'s dtype, then
  (q − zero)·scale.

``PackedWeight`` holds a layer's codes in that form ([in, out], so the exported graph is DequantizeLinear → MatMul);
``RangeObserver`` records the tensor a QuantLinear feeds its activation quantizer (prepare → calibrate → convert,
as PT2E does) and ``static_qparams`` turns what it saw into per-tensor 8-bit parameters with zero point 0 (min–max
or the MSE-best clipped range). The ONNX translations of the two ops live in ``export/onnx_graph.py``.
"""
from __future__ import annotations

import torch
from torch import nn

from .quantizers import QParams, range_qparams

__all__ = ["dequantize_linear", "quantize_dequantize", "PackedWeight", "RangeObserver", "static_qparams",
           "static_params", "ranges_qparams", "STATIC_DTYPES"]

# static activations, per tensor with zero point 0: sint8 symmetric, or uint8 for inputs shifted to be ≥ 0 (after
# GELU, ``LayerScheme.shifted``). A nonzero zero point costs OpenVINO a float Subtract after every int8 MatMul
# (its zero-point compensation: 9 % of the W8A8 encoder's time at 512², benchmarks/runtime_profile.py)
STATIC_DTYPES = ("sint8", "uint8")


@torch.library.custom_op("sam2ptq::dequantize_linear", mutates_args=())
def dequantize_linear(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int, block_size: int,
                      bits: int) -> torch.Tensor:
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
        self.register_buffer(f"{name}_zero", z.to(ct).contiguous())  # explicit zeros: see onnx_graph's note
        self.parts.append((name, axis, block))

    def forward(self) -> torch.Tensor:
        outs = [dequantize_linear(getattr(self, f"{n}_codes"), getattr(self, f"{n}_scale"),
                                  getattr(self, f"{n}_zero"), axis, block, self.bits)
                for n, axis, block in self.parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def static_params(qp: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) 0-d tensors for ``quantize_dequantize`` from per-tensor 8-bit parameters: an int8 zero for
    symmetric ones (``qp.zero`` None), else uint8."""
    scale = qp.scale.reshape(()).float()
    if qp.zero is None:
        return scale, torch.zeros((), dtype=torch.int8, device=scale.device)
    return scale, qp.zero.reshape(()).round().to(torch.uint8)


def _mse(v: torch.Tensor, lo: float, hi: float, dtype: str) -> float:
    scale, zero = static_params(range_qparams(lo, hi, dtype))
    return float((quantize_dequantize(v, scale, zero) - v).pow(2).sum(dtype=torch.float64))


def static_qparams(lo: float, hi: float, sample: torch.Tensor | None, method: str = "mse",
                   dtype: str = "sint8") -> QParams:
    """Per-tensor 8-bit parameters with zero point 0 (``dtype``: ``STATIC_DTYPES``) for a tensor whose values span
    [lo, hi]: sint8 symmetric, ±max(|lo|, |hi|)·t; uint8 (an input shifted to be ≥ 0) [0, hi·t], values below 0
    saturate. ``minmax``: t = 1; ``mse``: the t in 1, 0.99, …, 0.3 with the least squared quantization error on
    ``sample`` (values of the tensor; t = 1 stays a candidate, so a range is never clipped where the sample says it
    should not be)."""
    if dtype not in STATIC_DTYPES:
        raise ValueError(f"static activations are sint8 or uint8, not {dtype}")
    m = max(abs(lo), abs(hi)) if dtype == "sint8" else max(hi, 0.0)
    lo_of = (lambda a: -a) if dtype == "sint8" else (lambda a: 0.0)
    if method != "minmax" and sample is not None and sample.numel():
        v = sample.float().reshape(-1)
        m = min((m * (1 - 0.01 * i) for i in range(71)), key=lambda a: _mse(v, lo_of(a), a, dtype))
    return range_qparams(lo_of(m), m, dtype)  # uint8 from 0: zero point 0


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

    def qparams(self, method: str = "mse", dtype: str = "sint8") -> QParams:
        if self.seen == 0:
            raise ValueError("the observer saw no values: run calibration images through the prepared model")
        return static_qparams(self.lo, self.hi, self.sample, method, dtype)


def ranges_qparams(info: dict) -> dict[str, QParams]:
    """{layer: QParams} (per tensor) from a ``ranges.json`` dict ({"layers": {name: {"scale", "zero", "dtype"}}};
    a layer without "dtype" is uint8 with its zero point, as files written before sint8 were)."""
    return {k: QParams(torch.tensor([[v["scale"]]], dtype=torch.float32),
                       None if v.get("dtype", "uint8") == "sint8" else torch.tensor([[float(v["zero"])]]), -1)
            for k, v in info.get("layers", {}).items()}
