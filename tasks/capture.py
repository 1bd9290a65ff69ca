"""Stage 3: run the float encoder over the calibration set and store streaming per-layer statistics."""
from __future__ import annotations

import time

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.capture import capture_stats
from sam2ptq_core.config import stage_slices
from sam2ptq_core.data import normalize
from sam2ptq_core.store import stage_key

from ._common import (VERSIONS, Progress, cfg_of, finish, load_fp_model, manifest_of, stage_errors, store_of,
                      to_run_dtype)

STAGE = "capture_activations"


@task(name=STAGE, cache_policy=NO_CACHE)
def capture_activations(cfg: dict, model_ref: dict, calib_ref: dict) -> dict:
    c = cfg_of(cfg)
    t0 = time.time()
    with stage_errors(STAGE):
        store = store_of(c)
        sl = stage_slices(c)[STAGE]
        up = {"fetch_model": model_ref["key"], "build_calibration_set": calib_ref["key"]}
        key = stage_key(STAGE, VERSIONS[STAGE], sl, up)

        def build(tmp):
            fp = load_fp_model(c, manifest_of(store, model_ref))
            model = to_run_dtype(fp.model, c)
            dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
            images = torch.load(manifest_of(store, calib_ref).path("images.pt"), weights_only=True)
            bs = c.quant.calib.batch_size
            n_batches = -(-images.shape[0] // bs)
            prog = Progress(STAGE, images.shape[0], "image")
            batches = (normalize(images[i:i + bs]).to(dev, dt) for i in range(0, images.shape[0], bs))
            stats = capture_stats(model, batches, c.quant.calib.sample_tokens, c.seed, c.quant.skip,
                                  on_batch=lambda i: prog(min((i + 1) * bs, images.shape[0])))
            prog.close()
            torch.save({k: v.to_dict() for k, v in stats.items()}, tmp / "acts.pt")
            return {"num_layers": len(stats), "num_images": int(images.shape[0]), "batches": n_batches,
                    "tokens": {k: v.n_tokens for k, v in stats.items()},
                    "widths": {k: int(v.absmax.shape[0]) for k, v in stats.items()}}
        m, reused = store.run(STAGE, key, sl, up, build)
    return finish(STAGE, m, reused, t0)
