"""Smoothing (SmoothQuant, Xiao et al. 2023): migrate activation outliers into the weights.

Per input channel j: s_j = max|X_j|^α / max|W_{:,j}|^β, then X ← X / s and W ← W · diag(s), so X·Wᵀ is unchanged.
A zero, NaN or Inf scale becomes 1.

Candidate grid: DeepCompressor's GridSearch (``get_alpha_beta_pairs``), the same pairs in the same order. With
``num_grids`` = N the grid points are g = i/N, i = 1 … N−1; every list starts with the identity (0, 0), so the search
never picks scales worse than no smoothing on its own objective. α and β select families (values ≤ 0 are flags):
- α > 0: β > 0 → (g, g); β = 0 → (g, 0); β = −1 → (g, 1 − g); β = −2 → (g, 0) + (g, 1 − g) (the default: 2N − 1
  pairs, 39 for N = 20); β < −2 → (g, 0) + every (g, g');
- α = 0: the same with (0, g) added ahead of the α-led families;
- α = −1, −2, −3: the remaining rows of the table in ``_FAMILIES``.
Strategy ``Manual`` tries one pair: (α, 1 − α) if β < 0, (1 − β, β) if α < 0, else (α, β).
The objective is supplied by the caller: the output error of the fully quantized layer on a token sample with every
later transform (rotation, low-rank branch, weight and activation quantization) in place — see layer_recipe.py.
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


def _kind(v: float) -> str:
    return "+" if v > 0 else str(int(v)) if v in (0, -1, -2, -3) else "other"


# (alpha kind, beta kind) → families after (0, 0); "a": (g, 0), "b": (0, g), "tied": (g, g), "sum1": (g, 1 − g),
# "all": every (g, g'). Rows follow DeepCompressor's table; a missing beta kind falls back to the row's "else".
_FAMILIES = {
    "+": {"+": ["tied"], "0": ["a"], "-1": ["sum1"], "-2": ["a", "sum1"], "else": ["a", "all"]},
    "0": {"+": ["b"], "0": ["a", "b"], "-1": ["b", "sum1"], "-2": ["a", "b", "sum1"], "else": ["a", "b", "all"]},
    "-1": {"+": ["sum1"], "-1": ["sum1"], "0": ["a", "sum1"], "-2": ["a", "sum1"], "else": ["a", "all"]},
    "-2": {"+": ["b", "sum1"], "-1": ["b", "sum1"], "0": ["a", "b", "sum1"], "-2": ["a", "b", "sum1"],
           "else": ["a", "b", "all"]},
    "-3": {"+": ["b", "all"], "else": ["b", "a", "all"]},
}


def smooth_candidates(strategy: str, alpha: float, beta: float, num_grids: int) -> list[tuple[float, float]]:
    """The (α, β) pairs tried, in order; see module docstring."""
    if strategy == "Manual":
        if beta < 0:
            return [(alpha, 1 - alpha)]
        return [(1 - beta, beta)] if alpha < 0 else [(alpha, beta)]
    if strategy != "GridSearch":
        raise ValueError(f"unknown smoothing strategy {strategy!r}; use GridSearch or Manual")
    row = _FAMILIES.get(_kind(alpha))
    if row is None:
        raise ValueError(f"smoothing alpha {alpha} is not a grid setting; use a value in (0, 1] or 0, -1, -2, -3")
    g = [i / num_grids for i in range(1, num_grids)]
    family = {"a": [(x, 0.0) for x in g], "b": [(0.0, x) for x in g], "tied": [(x, x) for x in g],
              "sum1": [(x, 1 - x) for x in g], "all": [(x, y) for x in g for y in g]}
    return [(0.0, 0.0)] + [p for name in row.get(_kind(beta), row["else"]) for p in family[name]]


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
