"""Integer quantizers: dtypes, group-wise quantization parameters, integer codes and fake quantization.

Conventions (DeepCompressor's, see shared/notes/nunchaku-format.md):

- ``sint4`` / ``sint8``: signed symmetric, no zero point, codes in [-7, 7] / [-127, 127], scale = absmax / qmax.
- ``uint4`` / ``uint8``: asymmetric with an integer zero point, codes in [0, 15] / [0, 255]. The range is widened
  to contain 0 so that an exact zero (padding, dead channels) stays exactly zero after quantization.
- Groups run along the last dimension; every leading dimension is a row. ``group_size=-1`` is the whole row.

Group rule for widths that the group size does not divide (Hiera's 96/112/144 with groups of 64 or 128):
groups are consecutive chunks of ``group_size`` channels starting at channel 0, and the last group is *ragged*:
it holds the remaining ``K mod group_size`` channels and its scale comes from those real channels only. A group
size larger than the width is therefore the same as ``-1``. Other groups are never affected.
Scales are computed in float32; a group that is all zero gets scale 1 (its codes are the zero point).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .scheme import QDType, qdtype

__all__ = ["QDType", "QParams", "QTensor", "qdtype", "compute_qparams", "quantize", "dequantize",
           "fake_quantize", "range_qparams", "expand_groups", "quantize_with", "num_groups"]


@dataclass(frozen=True)
class QParams:
    """Per-group parameters. ``scale`` [rows, n_groups] float32; ``zero`` [rows, n_groups] float32 or None."""
    scale: torch.Tensor
    zero: torch.Tensor | None
    group_size: int


@dataclass(frozen=True)
class QTensor:
    """Integer codes (int16, shape of the input) with their parameters and the dtype name."""
    codes: torch.Tensor
    qparams: QParams
    dtype: str


def _group(group_size: int, width: int) -> int:
    return width if group_size <= 0 or group_size >= width else group_size


def num_groups(width: int, group_size: int) -> int:
    """Number of groups along a row of ``width`` channels (the last one may be ragged)."""
    g = _group(group_size, width)
    return -(-width // g)


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor:
    """[rows, K] → [rows, n_groups, g], padding a ragged last group by replicating its last real channel."""
    rows, k = x.shape
    pad = (-k) % g
    if pad:
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], dim=1)
    return x.reshape(rows, -1, g)


def compute_qparams(x: torch.Tensor, dtype: str, group_size: int = -1,
                    scale_dtype: torch.dtype | None = None) -> QParams:
    """Scales (and zeros) of ``x`` [..., K] per row and group, in float32. Returns shapes [rows, n_groups].

    ``scale_dtype`` (float16/bfloat16) rounds the scales to that dtype (kept as float32 values), so that a 16-bit
    export such as nunchaku's stores exactly the scales the codes were computed with."""
    qd = qdtype(dtype)
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    g = _group(group_size, x2.shape[1])
    xg = _grouped(x2, g)
    rnd = (lambda t: t.to(scale_dtype).float()) if scale_dtype is not None else (lambda t: t)
    if qd.signed:
        scale = rnd(xg.abs().amax(dim=-1) / qd.qmax)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return QParams(scale, None, g)
    lo = xg.amin(dim=-1).clamp(max=0)
    hi = xg.amax(dim=-1).clamp(min=0)
    scale = rnd((hi - lo) / qd.qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(qd.qmin, qd.qmax)
    return QParams(scale, zero, g)


def expand_groups(p: torch.Tensor, group_size: int, width: int) -> torch.Tensor:
    """Per-group tensor [rows, n_groups] → per-channel [rows, width]."""
    return p.repeat_interleave(group_size, dim=1)[:, :width]


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, qd: QDType) -> torch.Tensor:
    """Elementwise codes of ``x`` with broadcastable ``scale``/``zero`` (float result holding integers)."""
    q = torch.round(x / scale)
    if zero is not None:
        q = q + zero
    return q.clamp(qd.qmin, qd.qmax)


def quantize(x: torch.Tensor, dtype: str, group_size: int = -1, qparams: QParams | None = None,
             scale_dtype: torch.dtype | None = None) -> QTensor:
    """Integer codes of ``x`` [..., K]; ``qparams`` fixes the parameters (else computed from ``x``)."""
    qd = qdtype(dtype)
    qp = qparams if qparams is not None else compute_qparams(x, dtype, group_size, scale_dtype)
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    k = x2.shape[1]
    scale = expand_groups(qp.scale, qp.group_size, k)
    zero = None if qp.zero is None else expand_groups(qp.zero, qp.group_size, k)
    codes = quantize_with(x2, scale, zero, qd)
    return QTensor(codes.to(torch.int16).reshape(x.shape), qp, dtype)


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes → real values ``(code − zero) · scale`` computed in float32, returned in ``dtype``."""
    c = q.codes.reshape(-1, q.codes.shape[-1]).float()
    k = c.shape[1]
    scale = expand_groups(q.qparams.scale, q.qparams.group_size, k)
    if q.qparams.zero is not None:
        c = c - expand_groups(q.qparams.zero, q.qparams.group_size, k)
    return (c * scale).reshape(q.codes.shape).to(dtype)


def range_qparams(lo: float, hi: float, dtype: str) -> QParams:
    """Per-tensor parameters for values in [lo, hi] (static activation quantization from calibration ranges), by
    the same rule as ``compute_qparams``: symmetric scale = max(|lo|, |hi|) / qmax for signed formats; for unsigned
    ones the range widened to contain 0, scale = (hi − lo) / qmax and an integer zero point."""
    return compute_qparams(torch.tensor([[float(lo), float(hi)]]), dtype, -1)


def fake_quantize(x: torch.Tensor, dtype: str, group_size: int = -1) -> torch.Tensor:
    """Quantize then dequantize ``x`` [..., K] per row and group; same shape and dtype as ``x``.

    Example (sint4, one group): x = [0.7, -0.35, 0.1] → scale 0.1, codes [7, -4, 1] (round half to even on
    -3.5), result [0.7, -0.4, 0.1].
    """
    if x.numel() == 0:
        return x
    qd = qdtype(dtype)
    x2 = x.reshape(-1, x.shape[-1]).float()
    k = x2.shape[1]
    g = _group(group_size, k)
    if k % g == 0:  # fast path: no ragged group, no expansion of the parameters
        qp = compute_qparams(x2, dtype, g)
        xg = x2.reshape(x2.shape[0], -1, g)
        s = qp.scale.unsqueeze(-1)
        z = None if qp.zero is None else qp.zero.unsqueeze(-1)
        q = quantize_with(xg, s, z, qd)
        out = (q - z if z is not None else q) * s
        return out.reshape(x.shape).to(x.dtype)
    return dequantize(quantize(x2, dtype, g), x.dtype).reshape(x.shape)
