"""Stage 6: low-rank branch + GPTQ (or RTN) of every trunk linear in the smoothed, rotated coordinates."""
from __future__ import annotations

import json
import time

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import stage_slices
from sam2ptq_core.recipe import all_layer_errors, export_bias, layer_spec, quantize_all, rotation_matrices
from sam2ptq_core.sam2 import quantizable_linears
from sam2ptq_core.stats import LayerStats
from sam2ptq_core.store import stage_key

from ._common import VERSIONS, Progress, cfg_of, finish, load_fp_model, manifest_of, run_logger, stage_errors, store_of

STAGE = "gptq_lowrank"


@task(name=STAGE, cache_policy=NO_CACHE)
def gptq_lowrank(cfg: dict, model_ref: dict, acts_ref: dict, rot_ref: dict, smooth_ref: dict) -> dict:
    c = cfg_of(cfg)
    t0 = time.time()
    with stage_errors(STAGE):
        store = store_of(c)
        sl = stage_slices(c)[STAGE]
        up = {"capture_activations": acts_ref["key"], "rotate": rot_ref["key"], "smooth": smooth_ref["key"]}
        key = stage_key(STAGE, VERSIONS[STAGE], sl, up)

        def build(tmp):
            fp = load_fp_model(c, manifest_of(store, model_ref))
            acts = torch.load(manifest_of(store, acts_ref).path("acts.pt"), weights_only=True)
            stats = {k: LayerStats.from_dict(v) for k, v in acts.items()}
            layers = {k: v for k, v in quantizable_linears(fp.model, c.quant.skip).items() if k in stats}
            rots = rotation_matrices(json.loads(manifest_of(store, rot_ref).path("rotation.json").read_text()))
            scales = torch.load(manifest_of(store, smooth_ref).path("smooth.pt"), weights_only=True)
            spec = layer_spec(c.quant, c.seed)
            prog = Progress(STAGE, len(layers), "layer")
            lqs = quantize_all(layers, stats, scales, rots, spec, prog)
            prog.close()
            fallbacks = {k: lq.fallback for k, lq in lqs.items() if lq.fallback}
            for k, msg in fallbacks.items():
                run_logger().warning("%s: %s", k, msg)
            out = {k: {"weight": lq.weight.float(), "codes": lq.q.codes.to(torch.int16), "scale": lq.q.qparams.scale,
                       "zero": lq.q.qparams.zero if lq.q.qparams.zero is not None else torch.empty(0),
                       "group_size": torch.tensor(lq.q.qparams.group_size), "a": lq.a, "b": lq.b,
                       "bias": export_bias(layers[k], spec)}
                   for k, lq in lqs.items()}
            torch.save(out, tmp / "qlayers.pt")
            rows = all_layer_errors(layers, stats, lqs, scales, rots, spec)
            (tmp / "layers.json").write_text(json.dumps({"layers": rows, "fallbacks": fallbacks}, indent=1))
            return {"num_layers": len(lqs), "gptq_fallbacks": len(fallbacks)}
        m, reused = store.run(STAGE, key, sl, up, build)
    return finish(STAGE, m, reused, t0)
