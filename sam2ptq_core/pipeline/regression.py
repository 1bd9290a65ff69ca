"""Nightly regression guard: compare a run's mask agreement with the best successful run of the same family."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RegressionVerdict", "compare_runs", "eval_protocol", "family_of", "check_and_record"]


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


def eval_protocol(cfg) -> str:
    """Short hash of how a run is evaluated (held-out images, prompts, image size): only runs evaluated the same
    way are comparable."""
    from .config import config_hash
    d = {"eval": cfg.quant.eval.model_dump(mode="json", exclude={"regression_threshold", "num_overlays"}),
         "calib": cfg.quant.calib.model_dump(mode="json", include={"path", "num_samples", "image_size"}),
         "seed": cfg.seed}
    return config_hash(d)[:10]


def family_of(cfg, deployment: str | None) -> str:
    """Deployment name (else "cli"), job name, evaluation protocol, device and dtype: a run is only compared with
    earlier runs of the same job evaluated the same way on the same kind of hardware and precision."""
    return f"{deployment or 'cli'}:{cfg.job_name()}:{eval_protocol(cfg)}:{cfg.model.device}-{cfg.model.dtype}"


def check_and_record(ledger, family: str, current: dict, threshold_points: float) -> RegressionVerdict:
    """Compare ``current`` with the family's best successful run in ``ledger`` (a mapping); record it when ok.
    Against the best rather than the last run, a small drop every night still trips the guard once it adds up."""
    history = ledger.get(family, [])
    best = max(history, key=lambda r: r["miou_vs_fp"]) if history else None
    verdict = compare_runs(best, current, threshold_points)
    if verdict.ok:
        ledger[family] = history + [current]
    return verdict
