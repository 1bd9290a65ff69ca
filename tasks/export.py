"""Export (after the regression guard): the spec's output tree under output.root/<job>, reused when up to date."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import publish_summary, run_logger
from sam2ptq_core.pipeline.stages import Ref, open_artifact, stage_errors

NAME = "export"


@task(name=NAME, cache_policy=NO_CACHE)
def export(cfg: dict, refs: dict[str, Ref], guard: str = "") -> str:
    """``guard``: the regression guard's line when it starts a new baseline (new model weights, new held-out
    images) or accepts one; the tree's report.md says so under its first line, stages.json in its export entry
    (``regression_guard``, read by the CLI's summary), and the metrics table artifact in a row."""
    from sam2ptq_core.export.output_tree import export_key, record_stages, tree_is_current, write_tree
    c = load_config(cfg)
    t0 = time.time()
    log = run_logger()
    with stage_errors(NAME):
        target = Path(c.output.root) / c.job_name()
        key = export_key(c.model_dump(mode="json"), {k: r["key"] for k, r in refs.items()})
        stages = {k: {"key": r["key"], "reused": r["reused"], "seconds": r["seconds"]} for k, r in refs.items()}
        note = {"regression_guard": guard} if guard else {}
        if tree_is_current(target, key):
            record_stages(target, {**stages, NAME: {"key": key, "reused": True, "seconds": 0.0, **note}})
            log.info("reused %s (%s is up to date)", NAME, target)
        else:
            art = {k: open_artifact(c, r) for k, r in refs.items()}
            stages[NAME] = {"key": key, "reused": False, "seconds": 0.0, **note}

            def write_files(tmp: Path) -> None:
                from sam2ptq_core.pipeline.export_files import write_evaluation_files, write_model_files
                write_model_files(tmp, c, art["fetch_model"], art["smooth"], art["gptq_lowrank"], art["mixed"],
                                  art["static_ranges"], art["onnx_export"], art["onnx_runtime"])
                write_evaluation_files(tmp, art["evaluate"], art["onnx_runtime"], art["evaluate_video"], guard)
            copies = [f for f in art["evaluate"].files() if f.name not in ("report.md", "metrics.json")]
            copies += [f for f in art["evaluate_video"].files() if f.suffix == ".png"]
            write_tree(target, write_files, copies, stages)
            stages[NAME]["seconds"] = round(time.time() - t0, 2)
            record_stages(target, stages)
            log.info("wrote %s in %.1f s", target, time.time() - t0)
        publish_summary(target, log, guard)
    return str(target)
