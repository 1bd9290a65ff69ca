"""The sweep flow: one child run of the job deployment per (config, model), in parallel on the work pool, then one
comparison (table + plot of size vs embedding SQNR and mask mIoU, failed jobs named)."""
from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow

from sam2ptq_core.pipeline.progress import METRIC_ROWS, Progress, run_logger
from sam2ptq_core.pipeline.sweep import plan_jobs, shared_captures, write_comparison


def _child_metrics(client, run_id) -> dict | None:
    """The headline numbers of a finished child run, from its ``sam2-ptq-metrics`` table artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    arts = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=["sam2-ptq-metrics"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    if not arts:
        return None
    rows = json.loads(arts[-1].data) if isinstance(arts[-1].data, str) else arts[-1].data
    by = {r.get("key"): r["value"] for r in rows}  # by metrics.json field, not by display label
    got = {k: by.get(field) for k, field in METRIC_ROWS.items()}
    return got if None not in got.values() else None


@flow(name="sam2-ptq-sweep", log_prints=False, validate_parameters=True)
def sam2_ptq_sweep(models: list[str] | None = None, configs: list[str] | None = None,
                   overrides: list[str] | None = None, job_deployment: str = "sam2-ptq/sweep-job",
                   output_root: str = "outputs/sweeps", poll_seconds: float = 5.0) -> str:
    """Run every config for every model (``models`` empty: each config's own model) as a child run of
    ``job_deployment``; ``overrides`` apply to every job. Returns the folder of the comparison. Fails, after
    publishing the comparison, when any job failed."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

    log = run_logger()
    jobs = plan_jobs(models or [], configs or [], overrides or [])
    for group in shared_captures(jobs):
        log.info("capture computed once and shared by: %s", ", ".join(group))
    sweep = flow_run.name or datetime.now(timezone.utc).strftime("sweep-%Y%m%d-%H%M%S")
    runs = {}
    for job, _ in jobs:
        runs[job.name] = run_deployment(job_deployment, parameters=job.parameters(), timeout=0,
                                        flow_run_name=f"{sweep}-{job.name}", as_subflow=True)
        log.info("started %s as flow run %s", job.name, runs[job.name].id)

    final = {}
    with Progress("sweep", len(runs), "job") as progress, get_client(sync_client=True) as client:
        while len(final) < len(runs):
            for name, fr in runs.items():
                if name in final:
                    continue
                cur = client.read_flow_run(fr.id)
                if cur.state is not None and cur.state.is_final():
                    final[name] = cur
                    progress(len(final), what=f"{name} {cur.state.type.value.lower()}")
            if len(final) < len(runs):
                time.sleep(poll_seconds)
        rows = []
        for job, _ in jobs:
            cur = final[job.name]
            row = {"job": job.name, "model": job.model, "config": job.config, "status": cur.state.type.value,
                   "message": (cur.state.message or "").splitlines()[0] if cur.state.message else "",
                   "flow_run": str(cur.id)}
            if row["status"] == "COMPLETED":
                metrics = _child_metrics(client, cur.id)
                if metrics is None:
                    row.update(status="INCOMPLETE", message="completed without a sam2-ptq-metrics artifact")
                else:
                    row.update(metrics)
            rows.append(row)

    out = Path(output_root) / sweep
    md = write_comparison(rows, out)
    png = base64.b64encode((out / "comparison.png").read_bytes()).decode()
    create_markdown_artifact(md + f"\n![size vs fidelity](data:image/png;base64,{png})\n", key="sam2-ptq-sweep",
                             description=f"SAM2 PTQ sweep {sweep}: {len(rows)} jobs")
    create_table_artifact(rows, key="sam2-ptq-sweep-table", description=f"SAM2 PTQ sweep {sweep}")
    failed = [r for r in rows if r["status"] != "COMPLETED"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} sweep jobs failed: "
                           + "; ".join(f"{r['job']} ({r['status'].lower()}: {r['message']})" for r in failed))
    log.info("sweep %s: %d jobs completed; comparison in %s", sweep, len(rows), out)
    return str(out)
