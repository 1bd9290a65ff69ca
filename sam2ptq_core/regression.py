"""Nightly regression guard: compare a run's mask agreement with the last successful run of the same family."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RegressionVerdict", "compare_runs"]


@dataclass(frozen=True)
class RegressionVerdict:
    ok: bool
    message: str
    drop_points: float


def compare_runs(previous: dict | None, current: dict, threshold_points: float) -> RegressionVerdict:
    """``previous``/``current``: {"miou_vs_fp", "run", "config_hash"}; a drop of mIoU vs float by more than
    ``threshold_points`` (percentage points) is a regression. No previous run → ok (this run becomes the baseline)."""
    cur = current["miou_vs_fp"]
    if previous is None:
        return RegressionVerdict(True, f"no earlier successful run: mIoU vs FP {cur:.4f} is the new baseline", 0.0)
    prev = previous["miou_vs_fp"]
    drop = 100.0 * (prev - cur)
    if drop > threshold_points:
        return RegressionVerdict(False, (
            f"regression: mask mIoU vs float fell from {prev:.4f} (run {previous['run']}) to {cur:.4f}, "
            f"{drop:.2f} points > the allowed {threshold_points:g} (quant.eval.regression_threshold); "
            f"the output tree was not replaced"), drop)
    return RegressionVerdict(True, f"mIoU vs FP {cur:.4f} vs {prev:.4f} at run {previous['run']} "
                                   f"(change {-drop:+.2f} points, allowed drop {threshold_points:g})", drop)
