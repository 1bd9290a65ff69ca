"""Regression guard (after evaluate, before export): compare with the last successful run of this family in the
run ledger, fail the flow on a regression, record the run otherwise."""
from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import config_hash, load_config
from sam2ptq_core.pipeline.progress import in_prefect_run, run_logger
from sam2ptq_core.pipeline.regression import check_and_record, family_of
from sam2ptq_core.pipeline.stages import Ref, StageError, open_artifact, store_of

NAME = "regression_check"


@task(name=NAME, cache_policy=NO_CACHE)
def regression_check(cfg: dict, eval_ref: Ref, model_ref: Ref) -> dict:
    from prefect.runtime import deployment, flow_run
    c = load_config(cfg)
    metrics = open_artifact(c, eval_ref).metrics()
    model = {k: v for k, v in open_artifact(c, model_ref).info().items()
             if k in ("name", "source", "path", "random_weights", "weights_sha256")}
    fam = family_of(c, deployment.name, model.get("weights_sha256"))
    current = {"run": str(flow_run.id or "local"), "time": time.time(), "config_hash": config_hash(c),
               "miou_vs_fp": metrics["masks"]["miou_vs_fp"], "sqnr_db": metrics["encoder"]["sqnr_db"],
               "evaluate_key": eval_ref["key"], "model": model, "eval_seconds": float(eval_ref.get("seconds", 0))}
    verdict = check_and_record(store_of(c).ledger(), fam, current, c.quant.eval.regression_threshold,
                               across_models=c.quant.eval.regression_across_models)
    if not verdict.ok:
        if in_prefect_run():
            from prefect.artifacts import create_markdown_artifact
            create_markdown_artifact(f"# Regression in {fam}\n\n{verdict.message}\n", key="sam2-ptq-regression",
                                     description="nightly regression guard")
        raise StageError(f"stage {NAME} failed: {verdict.message}")
    run_logger().info("%s: %s", fam, verdict.message)
    if verdict.message.startswith("new model weights") and in_prefect_run():
        from prefect.artifacts import create_markdown_artifact
        create_markdown_artifact(f"# Regression guard: new baseline\n\n{verdict.message}\n",
                                 key="sam2-ptq-regression", description="nightly regression guard")
    return {"family": fam, "message": verdict.message}
