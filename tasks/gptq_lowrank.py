"""Stage 6: low-rank branch + GPTQ (or RTN) of every trunk linear in the smoothed, rotated coordinates."""
from __future__ import annotations

import json

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.recipe import all_layer_errors, export_bias, layer_rotations, layer_spec, quantize_all

from ._common import Progress, cfg_of, load_layer_inputs, manifest_of, run_logger, run_stage, store_of

STAGE = "gptq_lowrank"


@task(name=STAGE, cache_policy=NO_CACHE)
def gptq_lowrank(cfg: dict, model_ref: dict, acts_ref: dict, rot_ref: dict, smooth_ref: dict) -> dict:
    c = cfg_of(cfg)

    def build(tmp):
        li = load_layer_inputs(c, model_ref, acts_ref, rot_ref)
        sm = manifest_of(store_of(c), smooth_ref)
        scales = torch.load(sm.path("smooth.pt"), weights_only=True)
        chosen = set(json.loads(sm.path("rotation_choice.json").read_text())["layers"])
        rots = layer_rotations(li.layers, li.by_width, {k: k in chosen for k in li.layers})
        spec = layer_spec(c.quant, c.seed)
        prog = Progress(STAGE, len(li.layers), "layer")
        lqs = quantize_all(li.layers, li.stats, scales, rots, spec, prog)
        prog.close()
        fallbacks = {k: lq.fallback for k, lq in lqs.items() if lq.fallback}
        for k, msg in fallbacks.items():
            run_logger().warning("%s: %s", k, msg)
        out = {k: {"weight": lq.weight.float(), "codes": lq.q.codes.to(torch.int16), "scale": lq.q.qparams.scale,
                   "zero": lq.q.qparams.zero if lq.q.qparams.zero is not None else torch.empty(0),
                   "group_size": torch.tensor(lq.q.qparams.group_size), "a": lq.a, "b": lq.b,
                   "bias": export_bias(li.layers[k], spec)}
               for k, lq in lqs.items()}
        torch.save(out, tmp / "qlayers.pt")
        rows = all_layer_errors(li.layers, li.stats, lqs, scales, rots, spec)
        (tmp / "layers.json").write_text(json.dumps({"layers": rows, "fallbacks": fallbacks}, indent=1))
        return {"num_layers": len(lqs), "gptq_fallbacks": len(fallbacks)}
    up = {"capture_activations": acts_ref["key"], "rotate": rot_ref["key"], "smooth": smooth_ref["key"]}
    return run_stage(STAGE, c, up, build)
