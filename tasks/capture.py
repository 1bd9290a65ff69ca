"""Stage capture_activations: run the float encoder over the calibration set, keep per-layer input statistics."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["capture_activations"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def capture_activations(cfg: dict, model_ref: Ref, calib_ref: Ref) -> Ref:
    c = load_config(cfg)

    def build(tmp):
        from sam2ptq_core.pipeline.stage_inputs import load_fp_model, to_run_dtype
        from sam2ptq_core.sam2.capture import capture_stats
        from sam2ptq_core.sam2.images import normalize
        model = to_run_dtype(load_fp_model(c, open_artifact(c, model_ref)).model, c)
        dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
        images = open_artifact(c, calib_ref).images()
        n, bs = images.shape[0], c.quant.calib.batch_size
        with Progress(STAGE.name, n, "image") as prog:
            batches = (normalize(images[i:i + bs]).to(dev, dt) for i in range(0, n, bs))
            stats = capture_stats(model, batches, c.quant.calib.sample_tokens, c.seed, c.quant.skip,
                                  on_batch=lambda i: prog(min((i + 1) * bs, n)))
        STAGE.artifact.write(tmp, stats)
        return {"num_layers": len(stats), "num_images": int(n), "batches": -(-n // bs),
                "tokens": {k: v.n_tokens for k, v in stats.items()},
                "widths": {k: int(v.absmax.shape[0]) for k, v in stats.items()}}
    return run_stage(STAGE, c, {"fetch_model": model_ref, "build_calibration_set": calib_ref}, build)
