"""Stage fetch_model: resolve the checkpoint (hub id + revision, local dir, HF cache) or the seeded random model."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, run_stage

STAGE = STAGES["fetch_model"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def fetch_model(cfg: dict) -> Ref:
    c = load_config(cfg)
    resolved = {}

    def key_extra():
        # resolving first makes the key depend on the exact snapshot (a new hub commit → a new key)
        from sam2ptq_core.sam2.variants import resolve_checkpoint  # torch-free: a cached rerun skips the import
        m = c.model
        resolved["path"] = "" if m.random_init else str(resolve_checkpoint(m.name, m.path, m.revision))
        return {"resolved": resolved["path"]}

    def build(tmp):
        from sam2ptq_core.sam2.loading import describe_model
        info = describe_model(c.model.name, resolved["path"], c.model.revision, c.model.random_init, c.seed,
                              c.quant.calib.image_size, c.model.arch)
        if info["random_weights"]:
            run_logger().warning("RANDOM WEIGHTS: model.random_init is set; %s is built with seed %d, "
                                 "not loaded from a checkpoint", c.model.name, c.seed)
        STAGE.artifact.write(tmp, info)
        return info
    return run_stage(STAGE, c, {}, build, key_extra)
