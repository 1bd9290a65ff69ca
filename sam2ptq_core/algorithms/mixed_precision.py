"""Mixed precision: which layers fall back to a wider format, from measured per-layer sensitivity and real bytes.

Pure Python over numbers. A layer's cost is the bytes its format ships (``weight_bytes``): integer codes at their
bit width, one 16-bit scale (and, for unsigned formats, one 16-bit zero point) per group, and the 16-bit low-rank
branch r·(in + out); a float fallback is 16 bits per parameter. A 4-bit layer with a rank-32 branch can cost more
than its W8A8 fallback (tiny's first stages: 10–15 bits per parameter at "W4", 8.2 at W8A8), so the order is:
first every fallback that *saves* bytes (largest saving first), then the rest by decreasing loss per extra byte
(``loss``: {layer: the error that layer alone adds at the target precision, ≥ 0}; we use the embedding's
noise-to-signal power). A budget takes the longest prefix of that order whose average weight bits fit, so the chosen
sets are nested: a larger budget keeps every layer a smaller budget chose.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WeightFormat", "weight_bytes", "fallback_order", "choose_fallback", "average_bits", "minimum_bits",
           "branch_share"]


@dataclass(frozen=True)
class WeightFormat:
    """How a layer's weight is shipped: ``bits`` per code (16 = float, no scales), groups of ``group`` input
    channels (-1 = per output channel), ``zero`` points (unsigned formats), a 16-bit branch of ``rank``."""
    bits: int
    group: int = -1
    zero: bool = False
    rank: int = 0


def weight_bytes(n_in: int, n_out: int, fmt: WeightFormat) -> float:
    """Bytes of one layer's weight in ``fmt`` (codes + scales + zero points + branch, 16-bit where not codes)."""
    params = n_in * n_out
    if fmt.bits >= 16:
        return 2.0 * params
    g = n_in if fmt.group <= 0 or fmt.group >= n_in else fmt.group
    groups = n_out * -(-n_in // g)
    return params * fmt.bits / 8 + 2.0 * groups * (2 if fmt.zero else 1) + 2.0 * fmt.rank * (n_in + n_out)


def average_bits(params: dict[str, int], cost: dict[str, float], fb_cost: dict[str, float],
                 fallback: set[str]) -> float:
    """Average weight bits over the layers: 8·bytes / parameters, fallback layers at their fallback cost."""
    total = sum((fb_cost[k] if k in fallback else cost[k]) for k in params)
    return 8 * total / max(sum(params.values()), 1)


def fallback_order(loss: dict[str, float], cost: dict[str, float], fb_cost: dict[str, float]) -> list[str]:
    """Fallbacks that save bytes first (largest saving first), then by decreasing loss per extra byte (ties by
    name, so the order is deterministic)."""
    extra = {k: fb_cost[k] - cost[k] for k in loss}
    savers = sorted((k for k in loss if extra[k] < 0), key=lambda k: (extra[k], k))
    rest = sorted((k for k in loss if extra[k] >= 0), key=lambda k: (-loss[k] / max(extra[k], 1e-9), k))
    return savers + rest


def minimum_bits(params: dict[str, int], cost: dict[str, float], fb_cost: dict[str, float]) -> float:
    """The smallest average weight bits any fallback set reaches: every byte-saving fallback taken."""
    return average_bits(params, cost, fb_cost, {k for k in params if fb_cost[k] < cost[k]})


def choose_fallback(loss: dict[str, float], params: dict[str, int], cost: dict[str, float],
                    fb_cost: dict[str, float], budget_bits: float | None = None,
                    num_layers: int | None = None) -> list[str]:
    """The first ``num_layers`` of the order, or its longest prefix whose average weight bits stay ≤
    ``budget_bits``. Raises ValueError when no prefix fits (the budget is below ``minimum_bits``)."""
    order = fallback_order(loss, cost, fb_cost)
    if num_layers is not None:
        return order[:num_layers]
    if budget_bits is None:
        raise ValueError("give budget_bits or num_layers")
    best = None
    for i in range(len(order) + 1):
        if average_bits(params, cost, fb_cost, set(order[:i])) <= budget_bits + 1e-9:
            best = i
    if best is None:
        raise ValueError(f"quant.mixed.budget_bits {budget_bits} is below the minimum "
                         f"{minimum_bits(params, cost, fb_cost):.3f} average weight bits these layers can reach")
    return order[:best]


def branch_share(qlayers: dict[str, dict], schemes: dict, rank: int) -> dict:
    """The branch's rank and the share of the quantized layers' weight bytes it holds in 16-bit (codes at their
    scheme's bit width, branch factors a [r, in] and b [out, r] at 2 bytes; scales not counted)."""
    low = sum(q["codes"].numel() * schemes[k].bits / 8 for k, q in qlayers.items())
    hi = sum(2 * (q["a"].numel() + q["b"].numel()) for q in qlayers.values())
    return {"rank": rank, "lowbit_weight_bytes": int(low), "branch_16bit_bytes": int(hi),
            "share_16bit": hi / (hi + low) if hi + low else 0.0}
