"""Stage build_calibration_set: choose the calibration images and store them resized as uint8."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress
from sam2ptq_core.pipeline.stages import STAGES, Ref, run_stage, store_of

STAGE = STAGES["build_calibration_set"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def build_calibration_set(cfg: dict) -> Ref:
    from sam2ptq_core.sam2.images import files_digest, listing_digest, preprocess, select_images
    c = load_config(cfg)
    cache, calib = store_of(c).preprocess_cache(), c.quant.calib
    chosen, digest = [], {}

    def key_extra():
        # the listing and the chosen files' contents: hashing every file of a huge folder is not needed
        paths, skipped = select_images(calib.path, calib.num_samples, c.seed)
        chosen.extend([paths, skipped])
        digest.update(files_digest(cache, paths))
        return {"listing": listing_digest(calib.path), "files": digest, "skipped": skipped}

    def build(tmp):
        import torch
        paths, skipped = chosen
        imgs, records = [], []
        with Progress(STAGE.name, len(paths), "image") as prog:
            for i, p in enumerate(paths):
                x, hw = preprocess(cache, p, digest[str(p)], calib.image_size)
                imgs.append(x)
                records.append({"path": str(p), "size": p.stat().st_size, "sha256": digest[str(p)], "hw": hw})
                prog(i + 1, what=p.name)
        STAGE.artifact.write(tmp, torch.stack(imgs), records)
        return {"num_images": len(paths), "skipped": skipped, "image_size": calib.image_size}
    return run_stage(STAGE, c, {}, build, key_extra)
