"""Stage 4 (independent of the data): the Hadamard rotation spec for every quantized input width."""
from __future__ import annotations

import json

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.recipe import rotation_spec

from ._common import cfg_of, manifest_of, run_stage, store_of

STAGE = "rotate"


@task(name=STAGE, cache_policy=NO_CACHE)
def rotate(cfg: dict, model_ref: dict, acts_ref: dict) -> dict:
    c = cfg_of(cfg)

    def build(tmp):
        widths = list(manifest_of(store_of(c), acts_ref).meta["widths"].values())
        rot = c.quant.rotation
        spec = rotation_spec(widths, rot is not None, bool(rot and rot.random), c.seed)
        (tmp / "rotation.json").write_text(json.dumps(spec, indent=1))
        return {"enabled": spec["enabled"], "widths": spec["widths"]}
    return run_stage(STAGE, c, {"fetch_model": model_ref["key"], "capture_activations": acts_ref["key"]}, build)
