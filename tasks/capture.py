"""Stage 3: run the float encoder over the calibration set and store streaming per-layer statistics."""
from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.capture import capture_stats
from sam2ptq_core.data import normalize

from ._common import Progress, cfg_of, load_fp_model, manifest_of, run_stage, store_of, to_run_dtype

STAGE = "capture_activations"


@task(name=STAGE, cache_policy=NO_CACHE)
def capture_activations(cfg: dict, model_ref: dict, calib_ref: dict) -> dict:
    c = cfg_of(cfg)

    def build(tmp):
        store = store_of(c)
        model = to_run_dtype(load_fp_model(c, manifest_of(store, model_ref)).model, c)
        dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
        images = torch.load(manifest_of(store, calib_ref).path("images.pt"), weights_only=True)
        n, bs = images.shape[0], c.quant.calib.batch_size
        prog = Progress(STAGE, n, "image")
        batches = (normalize(images[i:i + bs]).to(dev, dt) for i in range(0, n, bs))
        stats = capture_stats(model, batches, c.quant.calib.sample_tokens, c.seed, c.quant.skip,
                              on_batch=lambda i: prog(min((i + 1) * bs, n)))
        prog.close()
        torch.save({k: v.to_dict() for k, v in stats.items()}, tmp / "acts.pt")
        return {"num_layers": len(stats), "num_images": int(n), "batches": -(-n // bs),
                "tokens": {k: v.n_tokens for k, v in stats.items()},
                "widths": {k: int(v.absmax.shape[0]) for k, v in stats.items()}}
    up = {"fetch_model": model_ref["key"], "build_calibration_set": calib_ref["key"]}
    return run_stage(STAGE, c, up, build)
