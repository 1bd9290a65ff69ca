"""Progress and logging inside and outside Prefect: log lines, a Prefect progress artifact, a terminal bar."""
from __future__ import annotations

import logging
import os

__all__ = ["in_prefect_run", "run_logger", "Progress", "publish_summary", "METRIC_ROWS"]


def _sqnr_label(level: str) -> str:
    return f"SQNR {level} (dB)"


# what a sweep reads back from each job (flows/sweep.py): its name there → the metrics.json field (dotted path). The
# "sam2-ptq-metrics" table artifact (publish_summary) carries each row's field in its "key" column, so a reader never
# depends on the display labels.
METRIC_ROWS = {"sqnr_db": "encoder.sqnr_db.embedding", "miou": "masks.miou_vs_fp",
               "size_mib": "size.quantized_linears_mib", "random": "random_weights"}


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (artifacts and run loggers exist only there)."""
    from prefect.context import FlowRunContext, TaskRunContext
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger:
    if in_prefect_run():
        from prefect.logging import get_run_logger
        return get_run_logger()
    return logging.getLogger("sam2ptq")  # task.fn() in tests, or plain library use


class Progress:
    """Log lines + a Prefect progress artifact; a terminal bar when SAM2PTQ_PROGRESS_BAR=1 (the CLI sets it).
    Call it as ``progress(done, total=None, what="")``; use it as a context manager to close the bar."""

    def __init__(self, stage: str, total: int, unit: str = "step"):
        self.stage, self.total, self.unit = stage, max(total, 1), unit
        self.log = run_logger()
        self.artifact = None
        self.last_logged = -1.0
        self.bar = None
        if os.environ.get("SAM2PTQ_PROGRESS_BAR") == "1":
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=f"{stage:>22}", unit=unit, leave=False, dynamic_ncols=True)
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact
            self.artifact = create_progress_artifact(0.0, description=f"{stage}: 0/{self.total} {unit}s")

    def __call__(self, done: int, total: int | None = None, what: str = "") -> None:
        frac = done / (total or self.total)
        if self.bar is not None:
            if total and total != self.bar.total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
            if what:
                self.bar.set_postfix_str(what, refresh=False)
        if frac - self.last_logged >= 0.1 or done == (total or self.total):
            self.last_logged = frac
            self.log.info("%s: %d/%d %ss %s", self.stage, done, total or self.total, self.unit, what)
            if self.artifact is not None:
                from prefect.artifacts import update_progress_artifact
                update_progress_artifact(self.artifact, 100 * frac,
                                         description=f"{self.stage}: {done}/{total or self.total} {self.unit}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish_summary(target, log: logging.Logger, guard: str = "") -> None:
    """The final report as a Prefect markdown artifact and the headline metrics as a table (only inside a run);
    ``guard``: the regression guard's line when it started or accepted a new baseline (a row of its own)."""
    if not in_prefect_run():
        return
    import json
    from pathlib import Path
    target = Path(target)
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        m = json.loads((target / "metrics.json").read_text())
        create_markdown_artifact((target / "report.md").read_text(), key="sam2-ptq-report",
                                 description=f"SAM2 PTQ report, output in {target}")
        rows = [{"metric": _sqnr_label(k), "key": f"encoder.sqnr_db.{k}", "value": round(v, 3)}
                for k, v in m["encoder"]["sqnr_db"].items()]
        rows += [{"metric": "mask mIoU vs float", "key": "masks.miou_vs_fp",
                  "value": round(m["masks"]["miou_vs_fp"], 4)},
                 {"metric": "prompts with IoU < 0.9", "key": "masks.frac_iou_below_0_9",
                  "value": round(m["masks"]["frac_iou_below_0_9"], 4)},
                 {"metric": "quantized linears (MiB)", "key": "size.quantized_linears_mib",  # codes + 16-bit branch
                  "value": round(m["size"]["quantized_linears_bytes"] / 2**20, 3)},  # + 16-bit mixed fallbacks
                 {"metric": "random weights", "key": "random_weights", "value": m["random_weights"]}]
        if guard:
            rows.append({"metric": "regression guard", "key": "regression_guard", "value": guard})
        create_table_artifact(rows, key="sam2-ptq-metrics", description="SAM2 PTQ metrics")
    except Exception as e:  # artifacts are a convenience: never fail an export over them
        log.warning("could not create the Prefect summary artifacts: %s", e)
