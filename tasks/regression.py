"""Regression guard (after evaluate, before export): compare with the best successful run of this family in the
run ledger, fail the flow on a regression, record the run otherwise."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import RunConfig, config_hash, load_config
from sam2ptq_core.pipeline.progress import in_prefect_run, run_logger
from sam2ptq_core.pipeline.regression import check_and_record, family_of, heldout_digest
from sam2ptq_core.pipeline.stages import Ref, StageError, open_artifact, store_of

NAME = "regression_check"


def heldout_of(c: RunConfig, evaluation) -> str:
    """The digest of the held-out images the evaluation was judged on: recorded by the evaluate stage where it ran;
    for a stage built before it recorded one, hashed here from the files metrics.json lists."""
    if "heldout_sha256" in evaluation.manifest.meta:
        return evaluation.manifest.meta["heldout_sha256"]
    from sam2ptq_core.sam2.images import files_digest
    files = [Path(p) for p in evaluation.metrics().get("eval_files", [])]
    gone = [str(p) for p in files if not p.is_file()]
    if gone:
        raise StageError(f"stage {NAME} failed: held-out image {gone[0]} (listed by evaluate "
                         f"{evaluation.manifest.key[:12]}) is gone; rerun so that evaluate draws its images again")
    return heldout_digest(list(files_digest(store_of(c).preprocess_cache(), files).values()))


def _artifact(title: str, message: str) -> None:
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact
        create_markdown_artifact(f"# {title}\n\n{message}\n", key="sam2-ptq-regression",
                                 description="nightly regression guard")


@task(name=NAME, cache_policy=NO_CACHE)
def regression_check(cfg: dict, eval_ref: Ref, model_ref: Ref, accept: str = "") -> dict:
    """``accept``: a reason to record this run as its family's new baseline whatever its score (an intended
    recipe change); the log, a Prefect artifact and the output tree say so. Returns {"family", "message",
    "note"}; ``note`` is the line for the tree's report ("" for an ordinary comparison)."""
    from prefect.runtime import deployment, flow_run
    c = load_config(cfg)
    evaluation = open_artifact(c, eval_ref)
    metrics = evaluation.metrics()
    model = {k: v for k, v in open_artifact(c, model_ref).info().items()
             if k in ("name", "source", "path", "random_weights", "weights_sha256")}
    heldout = heldout_of(c, evaluation)
    fam = family_of(c, deployment.name, model.get("weights_sha256"), heldout)
    current = {"run": str(flow_run.id or "local"), "time": time.time(), "config_hash": config_hash(c),
               "miou_vs_fp": metrics["masks"]["miou_vs_fp"], "sqnr_db": metrics["encoder"]["sqnr_db"],
               "evaluate_key": eval_ref["key"], "model": model, "heldout_sha256": heldout,
               "eval_seconds": float(eval_ref.get("seconds", 0))}
    verdict = check_and_record(store_of(c).ledger(), fam, current, c.quant.eval.regression_threshold,
                               across_models=c.quant.eval.regression_across_models, accept=accept)
    if not verdict.ok:
        _artifact(f"Regression in {fam}", verdict.message)
        raise StageError(f"stage {NAME} failed: {verdict.message}")
    (run_logger().warning if accept else run_logger().info)("%s: %s", fam, verdict.message)
    if verdict.note:
        _artifact("Regression guard: " + ("baseline accepted" if accept else "new baseline"), verdict.note)
    return {"family": fam, "message": verdict.message, "note": verdict.note}
