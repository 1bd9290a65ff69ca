"""Stage evaluate: float vs quantized SAM2 on held-out images — encoder SQNR, mask IoU, per-layer errors, report."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["evaluate"]


def _heldout_sha256(c, files: list[str]) -> str:
    """The digest of the held-out images' contents (the regression guard's family), where they were read: their
    hashes are memoised in the preprocess cache, so nothing is read twice."""
    from sam2ptq_core.pipeline.regression import heldout_digest
    from sam2ptq_core.pipeline.stages import store_of
    from sam2ptq_core.sam2.images import files_digest
    return heldout_digest(list(files_digest(store_of(c).preprocess_cache(), [Path(f) for f in files]).values()))


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def evaluate(cfg: dict, model_ref: Ref, calib_ref: Ref, smooth_ref: Ref, gptq_ref: Ref, mixed_ref: Ref,
             ranges_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref, "mixed": mixed_ref, "static_ranges": ranges_ref}

    def build(tmp):
        from sam2ptq_core.pipeline.evaluation import run_evaluation
        with Progress(STAGE.name, c.quant.eval.num_samples, "image") as prog:
            metrics, overlays, ious = run_evaluation(c, *(open_artifact(c, r) for r in refs.values()), prog)
        STAGE.artifact.write(tmp, metrics, overlays, ious)
        return {"miou_vs_fp": metrics["masks"]["miou_vs_fp"], "random_weights": metrics["random_weights"],
                "heldout_sha256": _heldout_sha256(c, metrics["eval_files"])}

    def key_extra():
        from sam2ptq_core.files import file_sha256
        ann = c.quant.eval.annotations
        return {"annotations_sha256": file_sha256(Path(ann))} if ann else {}
    return run_stage(STAGE, c, refs, build, key_extra)
