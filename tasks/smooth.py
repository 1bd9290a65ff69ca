"""Stage 5: per-layer smoothing scales by grid search on the fully quantized layer's output error, and (rotation
mode auto) the per-layer choice of keeping the Hadamard rotation.

Files: ``smooth.pt`` {layer: scale [in]} (empty without smoothing), ``rotation_choice.json`` {"random", "seed",
"layers": [rotated layers]}, ``search_log.json``."""
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
        rot = c.quant.rotation
        choice = {"random": bool(rot and rot.random), "seed": c.seed, "layers": []}
        if proj is None and rot is None:
            torch.save({}, tmp / "smooth.pt")
            (tmp / "rotation_choice.json").write_text(json.dumps(choice))
            return {"enabled": False}
        li = load_layer_inputs(c, model_ref, acts_ref, rot_ref)
        # without smoothing only the identity (0, 0) is tried: the search then just decides the rotation
        cands = smooth_candidates(proj.strategy, proj.alpha, proj.beta, proj.num_grids) if proj else [(0.0, 0.0)]
        prog = Progress(STAGE, len(li.layers), "layer")
        res = search_all_smoothing(li.layers, li.stats, li.rots, layer_spec(c.quant, c.seed), cands,
                                   auto_rotate=bool(rot and rot.mode == "auto"), progress=prog)
        prog.close()
        torch.save({k: r.scale for k, (r, _) in res.items()} if proj else {}, tmp / "smooth.pt")
        choice["layers"] = [k for k, (_, rotated) in res.items() if rotated]
        (tmp / "rotation_choice.json").write_text(json.dumps(choice, indent=1))
        log = {k: {"alpha": r.alpha, "beta": r.beta, "rotated": rd, "candidates": r.log} for k, (r, rd) in res.items()}
        (tmp / "search_log.json").write_text(json.dumps(log, indent=1))
        return {"enabled": proj is not None, "num_candidates": len(cands), "rotated_layers": len(choice["layers"])}
    return run_stage(STAGE, c, {"capture_activations": acts_ref["key"], "rotate": rot_ref["key"]}, build)
