"""Nightly regression guard: compare a run's mask agreement with the best successful run of the same family."""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

__all__ = ["RegressionVerdict", "compare_runs", "eval_protocol", "family_of", "check_and_record", "model_label",
           "heldout_digest"]


@dataclass(frozen=True)
class RegressionVerdict:
    ok: bool
    message: str
    drop_points: float
    note: str = ""  # the line the output tree's report carries: a new baseline (new weights, new held-out images)
    #                 or an accepted one; "" for an ordinary comparison


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
    change = 100.0 * (cur - prev)  # not -drop: an unchanged score reads +0.00, not -0.00
    return RegressionVerdict(True, f"mIoU vs FP {cur:.4f} vs {prev:.4f} at run {previous['run']} "
                                   f"(change {change:+.2f} points, allowed drop {threshold_points:g}){differ}", drop)


def eval_protocol(cfg) -> str:
    """Short hash of how a run is evaluated (held-out images, prompts, image size): only runs evaluated the same
    way are comparable."""
    from ..config import config_hash
    d = {"eval": cfg.quant.eval.model_dump(mode="json", exclude={"regression_threshold", "regression_across_models",
                                                                 "num_overlays", "video"}),
         "calib": cfg.quant.calib.model_dump(mode="json", include={"path", "num_samples", "image_size"}),
         "seed": cfg.seed}
    return config_hash(d)[:10]


def heldout_digest(sha256s: list[str]) -> str:
    """sha256 over the sorted content hashes of the held-out images a run was judged on: new files in the data
    folder that change the held-out draw change the digest (and the family)."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def family_of(cfg, deployment: str | None, weights_sha256: str | None = None, heldout: str | None = None) -> str:
    """Deployment name (else "cli"), job name, evaluation protocol, device and dtype, the held-out images' digest
    (``heldout_digest``, first 12) and the model weights' sha256 (first 12): a run is only compared with earlier
    runs of the same job and the same weights, judged on the same images in the same way on the same kind of
    hardware and precision (``check_and_record(across_models=True)`` looks past the weights)."""
    fam = f"{deployment or 'cli'}:{cfg.job_name()}:{eval_protocol(cfg)}:{cfg.model.device}-{cfg.model.dtype}"
    return f"{fam}:h{(heldout or '-')[:12]}:w{(weights_sha256 or '-')[:12]}"


_WEIGHTS = re.compile(r":w(?:[0-9a-f]{12}|-)$")  # a family's last two parts; the held-out part is missing in
_HELDOUT = re.compile(r":h(?:[0-9a-f]{12}|-)$")  # families recorded before it existed


def _no_weights(family: str) -> str:
    return _WEIGHTS.sub("", family)


def _base(family: str) -> str:
    """The family without its held-out digest and weights: the same job, evaluated the same way."""
    return _HELDOUT.sub("", _no_weights(family))


def _part(pattern: re.Pattern, family: str) -> str:
    m = pattern.search(family)
    return m.group()[2:] if m else "unrecorded"


def _since_accept(runs: list[dict]) -> list[dict]:
    """The runs from the last accepted baseline on (all of them without one), oldest first."""
    runs = sorted(runs, key=lambda r: r.get("time", 0))
    last = max((i for i, r in enumerate(runs) if r.get("accepted")), default=0)
    return runs[last:]


def _new_baseline(family: str, related: dict[str, list[dict]], current: dict) -> RegressionVerdict | None:
    """A family's first run when the job ran before with other weights or on other held-out images: says what
    changed since the job's latest run (None when the job never ran)."""
    if not related:
        return None
    key, last = max(((k, r) for k, runs in related.items() for r in runs), key=lambda kr: kr[1].get("time", 0))
    weights, heldout = _part(_WEIGHTS, family), _part(_HELDOUT, _no_weights(family))
    changed = []
    was = _part(_HELDOUT, _no_weights(key))
    if was != heldout:
        why = "files added to or changed in the data folder" if was != "unrecorded" else "not recorded then"
        changed.append(f"new held-out images {heldout} since run {last['run']} (was {was}: {why})")
    if _part(_WEIGHTS, key) != weights:
        changed.append(f"new model weights {weights} since run {last['run']} ({model_label(last.get('model'))})")
    msg = f"{'; '.join(changed)}: new baseline, mIoU vs FP {current['miou_vs_fp']:.4f}"
    return RegressionVerdict(True, msg, 0.0, note=msg)


def _accepted(best: dict | None, current: dict, reason: str) -> RegressionVerdict:
    cur = current["miou_vs_fp"]
    if best is None:
        msg = f"baseline accepted ({reason}): mIoU vs FP {cur:.4f} is the family's first run and its baseline"
    else:
        change = 100.0 * (cur - best["miou_vs_fp"])
        msg = (f"baseline accepted ({reason}): mIoU vs FP {cur:.4f} replaces the best {best['miou_vs_fp']:.4f} of "
               f"run {best['run']} ({change:+.2f} points); later runs of this family are compared with this run")
    return RegressionVerdict(True, msg, 0.0 if best is None else -change, note=msg)


def check_and_record(ledger, family: str, current: dict, threshold_points: float,
                     across_models: bool = False, accept: str = "") -> RegressionVerdict:
    """Compare ``current`` with the family's best successful run in ``ledger`` (a mapping); record it when ok.
    Against the best rather than the last run, a small drop every night still trips the guard once it adds up.
    A family's first run with new weights or new held-out images says what changed since the job's last run
    ("new model weights …", "new held-out images …"); ``across_models`` compares with the best run of any weights
    on the same images (the message then names both models). ``accept`` (a reason) records this run as the
    family's new baseline whatever its score: later runs are compared with the best run from it on. A score that
    is not a finite number always fails and is never recorded."""
    cur = current["miou_vs_fp"]
    if not isinstance(cur, (int, float)) or not math.isfinite(cur):
        return RegressionVerdict(False, (
            f"mask mIoU vs float is {cur}, not a score (the evaluation produced no valid masks); the run is not "
            f"recorded and the output tree was not replaced"), float("nan"))
    history = ledger.get(family, [])
    keys = [k for k in ledger.keys() if k != family]
    others = [r for k in keys if _no_weights(k) == _no_weights(family) for r in ledger.get(k, [])]
    pool = [r for r in _since_accept(history + others if across_models else history)
            if math.isfinite(r["miou_vs_fp"])]  # a NaN recorded before this check must not poison the best
    best = max(pool, key=lambda r: r["miou_vs_fp"]) if pool else None
    if accept:
        verdict = _accepted(best, current, accept)
        current = {**current, "accepted": accept}
    else:
        verdict = compare_runs(best, current, threshold_points)
        if best is None and not history:
            related = {k: ledger.get(k, []) for k in keys if _base(k) == _base(family)}
            verdict = _new_baseline(family, related, current) or verdict
    if verdict.ok:
        ledger[family] = history + [current]
    return verdict
