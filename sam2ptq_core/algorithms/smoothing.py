"""Smoothing (SmoothQuant, Xiao et al. 2023): migrate activation outliers into the weights.

Per input channel j: s_j = max|X_j|^α / max|W_{:,j}|^β, then X ← X / s and W ← W · diag(s), so X·Wᵀ is unchanged.
A zero, NaN or Inf scale becomes 1.

Candidate grid (DeepCompressor's GridSearch). With ``num_grids`` = N the grid points are a = i/N, i = 1 … N−1, and:
- ``beta < 0`` (default −2, "search β too"): (0, 0), (a, 0) and (a, 1 − a) for every a → 2N − 1 pairs (39 for N = 20);
- ``beta ≥ 0``: (0, 0) and (a, beta) for every a → N pairs.
Strategy ``Manual`` tries the single pair (alpha, 1 − alpha if beta < 0 else beta). (0, 0) is the identity, so the
search can never pick scales that are worse than no smoothing on its own objective.
The objective is supplied by the caller: the output error of the fully quantized layer on a token sample with every
later transform (rotation, low-rank branch, weight and activation quantization) in place — see layerq.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["smoothing_scales", "smooth_candidates", "SmoothResult", "search_smoothing"]


def smoothing_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """s = max|X|^α / max|W|^β per input channel [in] (float32); zero/NaN/Inf → 1."""
    s = x_absmax.double().pow(alpha) / w_absmax.double().pow(beta)
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return s.float()


def smooth_candidates(strategy: str, alpha: float, beta: float, num_grids: int) -> list[tuple[float, float]]:
    """The (α, β) pairs tried; see module docstring."""
    if strategy == "Manual":
        return [(alpha, 1 - alpha if beta < 0 else beta)]
    if strategy != "GridSearch":
        raise ValueError(f"unknown smoothing strategy {strategy!r}; use GridSearch or Manual")
    grid = [i / num_grids for i in range(1, num_grids)]
    pairs = [(0.0, 0.0)]
    if beta < 0:
        pairs += [(a, 0.0) for a in grid] + [(a, 1 - a) for a in grid]
    else:
        pairs += [(a, float(beta)) for a in grid]
    return pairs


@dataclass
class SmoothResult:
    """Chosen ``scale`` [in] with its (alpha, beta) and the search log [(alpha, beta, error)]."""
    scale: torch.Tensor
    alpha: float
    beta: float
    log: list[tuple[float, float, float]] = field(default_factory=list)


def search_smoothing(x_absmax: torch.Tensor, w_absmax: torch.Tensor, candidates: list[tuple[float, float]],
                     objective: Callable[[torch.Tensor], float]) -> SmoothResult:
    """Evaluate ``objective(s)`` for every candidate and keep the lowest (first one on ties)."""
    log = []
    best = None
    for a, b in candidates:
        s = smoothing_scales(x_absmax, w_absmax, a, b)
        err = objective(s)
        log.append((a, b, err))
        if best is None or err < best[0]:
            best = (err, s, a, b)
    _, s, a, b = best
    return SmoothResult(s, a, b, log)
