"""Stage rotate (independent of the data): the Hadamard rotation spec for every quantized input width."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["rotate"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def rotate(cfg: dict, acts_ref: Ref) -> Ref:
    c = load_config(cfg)

    def build(tmp):
        from sam2ptq_core.algorithms.model_recipe import rotation_spec
        rot = c.quant.rotation
        spec = rotation_spec(open_artifact(c, acts_ref).widths(), rot is not None, bool(rot and rot.random), c.seed)
        STAGE.artifact.write(tmp, spec)
        return {"enabled": spec["enabled"], "widths": spec["widths"]}
    return run_stage(STAGE, c, {"capture_activations": acts_ref}, build)
