"""Fidelity metrics: SQNR, cosine similarity and mask IoU (float64)."""
from __future__ import annotations

import math

import torch

__all__ = ["sqnr_db", "cosine", "mask_iou"]


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """10·log10(Σ ref² / Σ (ref − test)²); +inf when identical."""
    r, t = ref.double(), test.double()
    noise = float((r - t).pow(2).sum())
    signal = float(r.pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-300) / noise)


def cosine(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    r, t = ref.double().flatten(), test.double().flatten()
    den = float(r.norm() * t.norm())
    return float(r @ t) / den if den > 0 else float(torch.equal(r, t))


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks [..., H, W] → [...]; two empty masks have IoU 1 (they agree)."""
    a, b = a.bool().flatten(-2), b.bool().flatten(-2)
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
