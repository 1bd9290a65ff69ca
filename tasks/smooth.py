"""Stage 5: per-layer smoothing scales by grid search on the fully quantized layer's output error."""
from __future__ import annotations

import json
import time

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import stage_slices
from sam2ptq_core.recipe import layer_spec, rotation_matrices, search_all_smoothing
from sam2ptq_core.sam2 import quantizable_linears
from sam2ptq_core.smooth import smooth_candidates
from sam2ptq_core.stats import LayerStats
from sam2ptq_core.store import stage_key

from ._common import VERSIONS, Progress, cfg_of, finish, load_fp_model, manifest_of, stage_errors, store_of

STAGE = "smooth"


@task(name=STAGE, cache_policy=NO_CACHE)
def smooth(cfg: dict, model_ref: dict, acts_ref: dict, rot_ref: dict) -> dict:
    c = cfg_of(cfg)
    t0 = time.time()
    with stage_errors(STAGE):
        store = store_of(c)
        sl = stage_slices(c)[STAGE]
        up = {"capture_activations": acts_ref["key"], "rotate": rot_ref["key"]}
        key = stage_key(STAGE, VERSIONS[STAGE], sl, up)

        def build(tmp):
            proj = c.quant.smooth.proj if c.quant.smooth else None
            if proj is None:
                torch.save({}, tmp / "smooth.pt")
                return {"enabled": False}
            fp = load_fp_model(c, manifest_of(store, model_ref))
            acts = torch.load(manifest_of(store, acts_ref).path("acts.pt"), weights_only=True)
            stats = {k: LayerStats.from_dict(v) for k, v in acts.items()}
            layers = {k: v for k, v in quantizable_linears(fp.model, c.quant.skip).items() if k in stats}
            rots = rotation_matrices(json.loads(manifest_of(store, rot_ref).path("rotation.json").read_text()))
            cands = smooth_candidates(proj.strategy, proj.alpha, proj.beta, proj.num_grids)
            prog = Progress(STAGE, len(layers), "layer")
            res = search_all_smoothing(layers, stats, rots, layer_spec(c.quant, c.seed), cands, prog)
            prog.close()
            torch.save({k: r.scale for k, r in res.items()}, tmp / "smooth.pt")
            log = {k: {"alpha": r.alpha, "beta": r.beta, "candidates": r.log} for k, r in res.items()}
            (tmp / "search_log.json").write_text(json.dumps(log, indent=1))
            return {"enabled": True, "num_candidates": len(cands)}
        m, reused = store.run(STAGE, key, sl, up, build)
    return finish(STAGE, m, reused, t0)
