"""Stage 4 (independent of the data): the Hadamard rotation spec for every quantized input width."""
from __future__ import annotations

import json
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import stage_slices
from sam2ptq_core.recipe import rotation_spec
from sam2ptq_core.store import stage_key

from ._common import VERSIONS, cfg_of, finish, manifest_of, stage_errors, store_of

STAGE = "rotate"


@task(name=STAGE, cache_policy=NO_CACHE)
def rotate(cfg: dict, model_ref: dict, acts_ref: dict) -> dict:
    c = cfg_of(cfg)
    t0 = time.time()
    with stage_errors(STAGE):
        store = store_of(c)
        sl = stage_slices(c)[STAGE]
        up = {"fetch_model": model_ref["key"], "capture_activations": acts_ref["key"]}
        key = stage_key(STAGE, VERSIONS[STAGE], sl, up)

        def build(tmp):
            widths = list(manifest_of(store, acts_ref).meta["widths"].values())
            rot = c.quant.rotation
            spec = rotation_spec(widths, rot is not None, bool(rot and rot.random), c.seed)
            (tmp / "rotation.json").write_text(json.dumps(spec, indent=1))
            return {"enabled": spec["enabled"], "widths": spec["widths"]}
        m, reused = store.run(STAGE, key, sl, up, build)
    return finish(STAGE, m, reused, t0)
