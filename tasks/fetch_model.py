"""Stage 1: resolve the checkpoint (hub id + revision, local dir, HF cache) or the seeded random model."""
from __future__ import annotations

import json
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import stage_slices
from sam2ptq_core.sam2 import load_model, resolve_checkpoint, weights_sha256
from sam2ptq_core.store import stage_key

from ._common import VERSIONS, cfg_of, finish, run_logger, stage_errors, store_of

STAGE = "fetch_model"


@task(name=STAGE, cache_policy=NO_CACHE)
def fetch_model(cfg: dict) -> dict:
    c = cfg_of(cfg)
    t0 = time.time()
    with stage_errors(STAGE):
        sl = stage_slices(c)[STAGE]
        path = ""
        if not c.model.random_init:
            # resolving first makes the key depend on the exact snapshot (a new hub commit → a new key)
            path = str(resolve_checkpoint(c.model.name, c.model.path, c.model.revision))
        key = stage_key(STAGE, VERSIONS[STAGE], {**sl, "resolved": path}, {})

        def build(tmp):
            lm = load_model(c.model.name, path=path, revision=c.model.revision, random_init=c.model.random_init,
                            seed=c.seed, image_size=c.quant.calib.image_size, arch=c.model.arch)
            info = {"name": c.model.name, "source": lm.source, "path": path, "random_weights": lm.random_weights,
                    "weights_sha256": weights_sha256(lm.model),
                    "num_params_encoder": sum(p.numel() for p in lm.model.vision_encoder.parameters())}
            if lm.random_weights:
                run_logger().warning("RANDOM WEIGHTS: model.random_init is set; %s is built with seed %d, "
                                     "not loaded from a checkpoint", c.model.name, c.seed)
            (tmp / "model.json").write_text(json.dumps(info, indent=1))
            return info
        m, reused = store_of(c).run(STAGE, key, sl, {}, build)
    return finish(STAGE, m, reused, t0)
