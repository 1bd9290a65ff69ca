"""Stage 1: resolve the checkpoint (hub id + revision, local dir, HF cache) or the seeded random model."""
from __future__ import annotations

import json

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.sam2 import load_model, resolve_checkpoint, weights_sha256

from ._common import cfg_of, run_logger, run_stage

STAGE = "fetch_model"


@task(name=STAGE, cache_policy=NO_CACHE)
def fetch_model(cfg: dict) -> dict:
    c = cfg_of(cfg)
    resolved = {}

    def key_extra():
        # resolving first makes the key depend on the exact snapshot (a new hub commit → a new key)
        resolved["path"] = "" if c.model.random_init else str(resolve_checkpoint(c.model.name, c.model.path,
                                                                                 c.model.revision))
        return {"resolved": resolved["path"]}

    def build(tmp):
        lm = load_model(c.model.name, path=resolved["path"], revision=c.model.revision,
                        random_init=c.model.random_init, seed=c.seed, image_size=c.quant.calib.image_size,
                        arch=c.model.arch)
        info = {"name": c.model.name, "source": lm.source, "path": resolved["path"],
                "random_weights": lm.random_weights, "weights_sha256": weights_sha256(lm.model),
                "num_params_encoder": sum(p.numel() for p in lm.model.vision_encoder.parameters())}
        if lm.random_weights:
            run_logger().warning("RANDOM WEIGHTS: model.random_init is set; %s is built with seed %d, "
                                 "not loaded from a checkpoint", c.model.name, c.seed)
        (tmp / "model.json").write_text(json.dumps(info, indent=1))
        return info
    return run_stage(STAGE, c, {}, build, key_extra)
