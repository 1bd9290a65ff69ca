"""Regression guard (after evaluate, before export): compare with the last successful run of this family in the
run ledger, fail the flow on a regression, record the run otherwise."""
from __future__ import annotations

import json
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import config_hash, eval_protocol
from sam2ptq_core.regression import compare_runs

from ._common import StageError, cfg_of, in_prefect_run, manifest_of, run_logger, store_of

STAGE = "regression_check"


def family_of(cfg) -> str:
    """Deployment name when run by a Prefect deployment (else "cli"), the job name and the evaluation protocol:
    a run is only compared with earlier runs evaluated on the same images with the same prompts."""
    from prefect.runtime import deployment
    return f"{deployment.name or 'cli'}:{cfg.job_name()}:{eval_protocol(cfg)}"


def _run_id() -> str:
    from prefect.runtime import flow_run
    return str(flow_run.id or "local")


@task(name=STAGE, cache_policy=NO_CACHE)
def regression_check(cfg: dict, eval_ref: dict) -> dict:
    c = cfg_of(cfg)
    store = store_of(c)
    metrics = json.loads(manifest_of(store, eval_ref).path("metrics.json").read_text())
    fam = family_of(c)
    ledger = store.ledger()
    history = ledger.get(fam, [])
    current = {"run": _run_id(), "time": time.time(), "config_hash": config_hash(c),
               "miou_vs_fp": metrics["masks"]["miou_vs_fp"], "sqnr_db": metrics["encoder"]["sqnr_db"],
               "evaluate_key": eval_ref["key"]}
    verdict = compare_runs(history[-1] if history else None, current, c.quant.eval.regression_threshold)
    if not verdict.ok:
        if in_prefect_run():
            from prefect.artifacts import create_markdown_artifact
            create_markdown_artifact(f"# Regression in {fam}\n\n{verdict.message}\n", key="sam2-ptq-regression",
                                     description="nightly regression guard")
        raise StageError(f"stage {STAGE} failed: {verdict.message}")
    run_logger().info("%s: %s", fam, verdict.message)
    ledger[fam] = history + [current]
    return {"family": fam, "message": verdict.message}
