"""Mixed precision: which layers fall back to a wider format, from measured per-layer sensitivity.

Pure Python over numbers: ``loss`` is {layer: the error that layer alone adds at the target precision, ≥ 0}
(we use the embedding's noise-to-signal power, 10^(−SQNR/10)), ``params`` {layer: weight parameters}. Layers fall
back in order of decreasing loss per parameter — the greedy order of the knapsack "most error removed per extra
byte" — and a budget takes the longest prefix of that order that fits, so the chosen sets are nested: a larger
budget keeps every layer a smaller budget chose.
"""
from __future__ import annotations

__all__ = ["fallback_order", "choose_fallback", "average_bits"]


def fallback_order(loss: dict[str, float], params: dict[str, int]) -> list[str]:
    """Layers by decreasing loss per parameter (ties by name, so the order is deterministic)."""
    return sorted(loss, key=lambda k: (-loss[k] / max(params[k], 1), k))


def average_bits(params: dict[str, int], fallback: set[str], bits: int, fallback_bits: int) -> float:
    total = sum(params.values())
    return sum(p * (fallback_bits if k in fallback else bits) for k, p in params.items()) / max(total, 1)


def choose_fallback(loss: dict[str, float], params: dict[str, int], bits: int, fallback_bits: int,
                    budget_bits: float | None = None, num_layers: int | None = None) -> list[str]:
    """The most sensitive layers that fit: the first ``num_layers`` of the order, or its longest prefix whose
    parameter-weighted average weight bits stay ≤ ``budget_bits``. A prefix, so a larger budget's set always
    contains a smaller budget's."""
    order = fallback_order(loss, params)
    if num_layers is not None:
        return order[:num_layers]
    if budget_bits is None:
        raise ValueError("give budget_bits or num_layers")
    chosen: list[str] = []
    for k in order:
        if average_bits(params, {*chosen, k}, bits, fallback_bits) > budget_bits + 1e-12:
            break
        chosen.append(k)
    return chosen
