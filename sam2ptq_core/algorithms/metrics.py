"""Fidelity metrics: SQNR, cosine similarity, mask IoU (float64) and DAVIS's video measures J (region) and F
(boundary)."""
from __future__ import annotations

import math

import torch

__all__ = ["sqnr_db", "cosine", "mask_iou", "boundary_map", "boundary_f", "davis_jf"]


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


def boundary_map(seg: torch.Tensor) -> torch.Tensor:
    """The boundary pixels of a boolean mask [H, W] as DAVIS defines them (``seg2bmap`` of the DAVIS 2017
    evaluation, Martin et al. 2004): a pixel is boundary where it differs from its east, south or south-east
    neighbour (outside the image counts as background); the last row compares east only, the last column south
    only, and the bottom-right pixel is never boundary."""
    seg = seg.bool()
    e, s, se = torch.zeros_like(seg), torch.zeros_like(seg), torch.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _dilate(b: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of [H, W] by the disk x² + y² ≤ r² (skimage's ``disk(r)``, as DAVIS uses it)."""
    y, x = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = ((x * x + y * y) <= r * r).double()[None, None]
    hit = torch.nn.functional.conv2d(b.double()[None, None], disk, padding=r)[0, 0]
    return hit > 0.5


def boundary_f(pred: torch.Tensor, ref: torch.Tensor, bound_th: float = 0.008) -> float:
    """DAVIS's boundary measure F of ``pred`` against ``ref`` (boolean [H, W]): boundary pixels match within
    ceil(bound_th · image diagonal) pixels (a disk); F = 2PR / (P + R) of the boundary precision P and recall R.
    Both boundaries empty: 1; one empty: 0 (P or R is 0, as DAVIS sets them)."""
    r = int(math.ceil(bound_th * math.hypot(*pred.shape))) if bound_th < 1 else int(bound_th)
    bp, br = boundary_map(pred), boundary_map(ref)
    n_p, n_r = int(bp.sum()), int(br.sum())
    if n_p == 0 or n_r == 0:
        return 1.0 if n_p == n_r else 0.0
    precision = float((bp & _dilate(br, r)).sum()) / n_p
    recall = float((br & _dilate(bp, r)).sum()) / n_r
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def davis_jf(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(J, F) of one object on one frame, boolean masks [H, W]: J the region IoU (both empty: 1), F the boundary
    measure. DAVIS's J&F of a clip is the mean of the mean J and the mean F over its objects and frames."""
    return float(mask_iou(pred, ref)), boundary_f(pred, ref)
