"""Nightly regression guard: compare a run's mask agreement with the best successful run of the same family."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RegressionVerdict", "compare_runs", "eval_protocol", "family_of", "check_and_record", "model_label"]


@dataclass(frozen=True)
class RegressionVerdict:
    ok: bool
    message: str
    drop_points: float


def model_label(m: dict | None) -> str:
    """"tiny weights 1a2b3c4d5e6f (random)" from a run's model record (fetch_model's info)."""
    if not m:
        return "unknown weights"
    src = "random" if m.get("random_weights") else (m.get("path") or m.get("source") or "")
    return f"{m.get('name', '?')} weights {str(m.get('weights_sha256', ''))[:12]} ({src})"


def compare_runs(previous: dict | None, current: dict, threshold_points: float) -> RegressionVerdict:
    """``previous``/``current``: {"miou_vs_fp", "run", "config_hash", "model", "eval_seconds"}; a drop of mIoU vs
    float by more than ``threshold_points`` (percentage points) is a regression. No previous run → ok (this run
    becomes the baseline). The message names both models when their weights differ."""
    cur = current["miou_vs_fp"]
    if previous is None:
        return RegressionVerdict(True, f"no earlier successful run: mIoU vs FP {cur:.4f} is the new baseline", 0.0)
    prev = previous["miou_vs_fp"]
    drop = 100.0 * (prev - cur)
    pm, cm = previous.get("model"), current.get("model")
    differ = (f"; the models differ: {model_label(pm)} then, {model_label(cm)} now"
              if pm and cm and pm.get("weights_sha256") != cm.get("weights_sha256") else "")
    if drop > threshold_points:
        took = f" (its evaluation took {current['eval_seconds']:.0f} s)" if "eval_seconds" in current else ""
        return RegressionVerdict(False, (
            f"regression: mask mIoU vs float fell from {prev:.4f} (run {previous['run']}) to {cur:.4f}{took}, "
            f"{drop:.2f} points > the allowed {threshold_points:g} (quant.eval.regression_threshold){differ}; "
            f"the output tree was not replaced"), drop)
    return RegressionVerdict(True, f"mIoU vs FP {cur:.4f} vs {prev:.4f} at run {previous['run']} "
                                   f"(change {-drop:+.2f} points, allowed drop {threshold_points:g}){differ}", drop)


def eval_protocol(cfg) -> str:
    """Short hash of how a run is evaluated (held-out images, prompts, image size): only runs evaluated the same
    way are comparable."""
    from ..config import config_hash
    d = {"eval": cfg.quant.eval.model_dump(mode="json", exclude={"regression_threshold", "regression_across_models",
                                                                 "num_overlays"}),
         "calib": cfg.quant.calib.model_dump(mode="json", include={"path", "num_samples", "image_size"}),
         "seed": cfg.seed}
    return config_hash(d)[:10]


def family_of(cfg, deployment: str | None, weights_sha256: str | None = None) -> str:
    """Deployment name (else "cli"), job name, evaluation protocol, device and dtype, and the model weights' sha256
    (first 12): a run is only compared with earlier runs of the same job and the same weights, evaluated the same
    way on the same kind of hardware and precision (``check_and_record(across_models=True)`` looks past the
    weights)."""
    fam = f"{deployment or 'cli'}:{cfg.job_name()}:{eval_protocol(cfg)}:{cfg.model.device}-{cfg.model.dtype}"
    return f"{fam}:w{weights_sha256[:12]}" if weights_sha256 else fam


def _base(family: str) -> str:
    return family.rsplit(":w", 1)[0]


def check_and_record(ledger, family: str, current: dict, threshold_points: float,
                     across_models: bool = False) -> RegressionVerdict:
    """Compare ``current`` with the family's best successful run in ``ledger`` (a mapping); record it when ok.
    Against the best rather than the last run, a small drop every night still trips the guard once it adds up.
    A family's first run with new weights says which model the job ran before ("new model weights …");
    ``across_models`` compares with the best run of any weights (the message then names both models)."""
    history = ledger.get(family, [])
    others = [r for k in ledger.keys() if k != family and _base(k) == _base(family) for r in ledger.get(k, [])]
    pool = history + others if across_models else history
    best = max(pool, key=lambda r: r["miou_vs_fp"]) if pool else None
    verdict = compare_runs(best, current, threshold_points)
    if best is None and others:
        last = max(others, key=lambda r: r.get("time", 0))
        verdict = RegressionVerdict(True, (
            f"new model weights {family.rsplit(':w', 1)[-1]} since run {last['run']} "
            f"({model_label(last.get('model'))}): new baseline, mIoU vs FP {current['miou_vs_fp']:.4f}"), 0.0)
    if verdict.ok:
        ledger[family] = history + [current]
    return verdict
