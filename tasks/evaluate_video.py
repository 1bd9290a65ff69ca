"""Stage evaluate_video (``quant.eval.video``): the quantized encoder inside SAM2's video predictor on a clip, J&F
against the float tracker per object and frame, per-frame encoder and per-object time. Keyed by the video settings
and the clip's content, so a changed clip re-runs it and nothing else."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import load_config
from sam2ptq_core.pipeline.progress import Progress, run_logger
from sam2ptq_core.pipeline.stages import STAGES, Ref, open_artifact, run_stage

STAGE = STAGES["evaluate_video"]


@task(name=STAGE.name, description=STAGE.summary, cache_policy=NO_CACHE)
def evaluate_video(cfg: dict, model_ref: Ref, calib_ref: Ref, smooth_ref: Ref, gptq_ref: Ref, mixed_ref: Ref,
                   ranges_ref: Ref) -> Ref:
    c = load_config(cfg)
    refs = {"fetch_model": model_ref, "build_calibration_set": calib_ref, "smooth": smooth_ref,
            "gptq_lowrank": gptq_ref, "mixed": mixed_ref, "static_ranges": ranges_ref}

    def build(tmp):
        v = c.quant.eval.video
        if v is None:
            STAGE.artifact.write(tmp, {"enabled": False})
            return {"enabled": False}
        from sam2ptq_core.pipeline.video_evaluation import run_video_evaluation
        art = {k: open_artifact(c, r) for k, r in refs.items()}
        with Progress(STAGE.name, 2 * v.num_frames, "frame") as prog:
            metrics, strip = run_video_evaluation(c, art["fetch_model"], art["smooth"], art["gptq_lowrank"],
                                                  art["mixed"], art["static_ranges"], prog)
        title = c.model.name + (" (random weights)" if metrics["random_weights"] else "")
        STAGE.artifact.write(tmp, metrics, strip, title)
        run_logger().info("evaluate_video: J&F %.4f (J %.4f, F %.4f) of the quantized tracker against the float "
                          "one over %d frames, %d objects", metrics["JF"], metrics["mean_J"], metrics["mean_F"],
                          len(metrics["frames"]), len(metrics["objects"]))
        return {"enabled": True, "JF": round(metrics["JF"], 4), "random_weights": metrics["random_weights"]}

    def key_extra():
        if c.quant.eval.video is None:
            return {}
        from pathlib import Path

        from sam2ptq_core.export.clips import frame_files
        from sam2ptq_core.pipeline.stages import store_of
        from sam2ptq_core.sam2.images import files_digest
        clip = Path(c.quant.eval.video.clip)  # the frames the stage reads; hashes memoised as evaluate's images
        files = list(frame_files(clip)) if clip.is_dir() else [clip]
        digest = files_digest(store_of(c).preprocess_cache(), files)
        return {"clip_sha256": {f.name: digest[str(f)] for f in files}}
    return run_stage(STAGE, c, refs, build, key_extra)
