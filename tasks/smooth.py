"""Stage 5: per-layer smoothing scales by grid search on the fully quantized layer's output error."""
from __future__ import annotations

import json

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.recipe import layer_spec, search_all_smoothing
from sam2ptq_core.smooth import smooth_candidates

from ._common import Progress, cfg_of, load_layer_inputs, run_stage

STAGE = "smooth"


@task(name=STAGE, cache_policy=NO_CACHE)
def smooth(cfg: dict, model_ref: dict, acts_ref: dict, rot_ref: dict) -> dict:
    c = cfg_of(cfg)

    def build(tmp):
        proj = c.quant.smooth.proj if c.quant.smooth else None
        if proj is None:
            torch.save({}, tmp / "smooth.pt")
            return {"enabled": False}
        li = load_layer_inputs(c, model_ref, acts_ref, rot_ref)
        cands = smooth_candidates(proj.strategy, proj.alpha, proj.beta, proj.num_grids)
        prog = Progress(STAGE, len(li.layers), "layer")
        res = search_all_smoothing(li.layers, li.stats, li.rots, layer_spec(c.quant, c.seed), cands, prog)
        prog.close()
        torch.save({k: r.scale for k, r in res.items()}, tmp / "smooth.pt")
        log = {k: {"alpha": r.alpha, "beta": r.beta, "candidates": r.log} for k, r in res.items()}
        (tmp / "search_log.json").write_text(json.dumps(log, indent=1))
        return {"enabled": True, "num_candidates": len(cands)}
    return run_stage(STAGE, c, {"capture_activations": acts_ref["key"], "rotate": rot_ref["key"]}, build)
