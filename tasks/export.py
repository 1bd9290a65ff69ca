"""Stage 8 (not cached, cheap): write the spec's output tree atomically under output.root/<job>."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.store import atomic_dir

from ._common import cfg_of, in_prefect_run, load_fp_model, manifest_of, run_logger, stage_errors, store_of

STAGE = "export"


@task(name=STAGE, cache_policy=NO_CACHE)
def export(cfg: dict, refs: dict[str, dict]) -> str:
    c = cfg_of(cfg)
    t0 = time.time()
    with stage_errors(STAGE):
        store = store_of(c)
        target = Path(c.output.root) / c.job_name()
        fp = load_fp_model(c, manifest_of(store, refs["fetch_model"]))
        qlayers = torch.load(manifest_of(store, refs["gptq_lowrank"]).path("qlayers.pt"), weights_only=True)
        sm = manifest_of(store, refs["smooth"])
        smooth = torch.load(sm.path("smooth.pt"), weights_only=True)
        rotation = json.loads(sm.path("rotation_choice.json").read_text())
        ev = manifest_of(store, refs["evaluate"])

        def build(tmp: Path) -> None:
            from sam2ptq_core.export.cache import write_cache_files
            write_cache_files(tmp / "cache", fp.model.state_dict(), qlayers, smooth, rotation,
                              whole_model=c.save_model)
            if c.convert_nunchaku:
                from sam2ptq_core.export.nunchaku import write_nunchaku
                write_nunchaku(tmp / "nunchaku", c, fp.model, qlayers, smooth)
            (tmp / "config.yaml").write_text(yaml.safe_dump(c.model_dump(mode="json"), sort_keys=False))
            for f in ev.dir.iterdir():
                if f.name != "manifest.json":
                    shutil.copy2(f, tmp / f.name)
            stages = {k: {"key": v["key"], "reused": v["reused"]} for k, v in refs.items()}
            (tmp / "stages.json").write_text(json.dumps(stages, indent=1))
        atomic_dir(target, build)
        run_logger().info("wrote %s in %.1f s", target, time.time() - t0)
        _summary_artifacts(target)
    return str(target)



def _summary_artifacts(target: Path) -> None:
    """The final metrics as a Prefect markdown + table artifact (no-op outside a Prefect run)."""
    if not in_prefect_run():
        return
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        m = json.loads((target / "metrics.json").read_text())
        create_markdown_artifact((target / "report.md").read_text(), key="sam2-ptq-report",
                                 description=f"SAM2 PTQ report, output in {target}")
        rows = [{"metric": f"SQNR {k} (dB)", "value": round(v, 3)} for k, v in m["encoder"]["sqnr_db"].items()]
        rows += [{"metric": "mask mIoU vs float", "value": round(m["masks"]["miou_vs_fp"], 4)},
                 {"metric": "prompts with IoU < 0.9", "value": round(m["masks"]["frac_iou_below_0_9"], 4)},
                 {"metric": "random weights", "value": m["random_weights"]}]
        create_table_artifact(rows, key="sam2-ptq-metrics", description="SAM2 PTQ metrics")
    except Exception as e:  # artifacts are a convenience: never fail an export over them
        run_logger().warning("could not create the Prefect summary artifacts: %s", e)
