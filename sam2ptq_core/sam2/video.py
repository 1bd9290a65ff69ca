"""SAM2's video path (transformers' ``Sam2VideoModel``) with any image encoder: the float one, the quantized one
(QuantLinear, fake quantization) or one that runs on a graph runtime (``export/video.py``).

``Sam2VideoModel.get_image_features`` calls ``self.vision_encoder(pixel_values)`` and reads its raw
``fpn_hidden_states`` (it applies conv_s0/conv_s1 itself and never adds ``no_memory_embedding``) and its
``fpn_position_encoding``; the image model's encoder (a ``Sam2VisionModel``, the class the video model builds
from the same ``vision_config``) returns exactly that, so a quantized ``Sam2Model``'s encoder drops in as it is.

Tracking is streaming and forward only: frames are read one at a time, the prompts are given on one frame, and
frames before it are skipped (SAM2's predictor can also propagate backwards; that needs the whole clip in memory).
Per frame the time splits into the encoder (E, measured by hooks on ``vision_encoder``) and the rest: prompt
encoder + mask decoder, memory attention and memory encoder for every object (≈ M·n, the per-object part).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .images import normalize, resize_uint8

RANDOM_OBJECT_SCORE = 10.0  # the random model's object-score logit bias (see build_video_model)

__all__ = ["video_config", "build_video_model", "ObjectPrompt", "TrackedFrame", "median_times", "track",
           "ForwardClock", "jf_scores"]


def video_config(image_model: nn.Module, **overrides):
    """A ``Sam2VideoConfig`` whose vision, prompt-encoder and mask-decoder configs are the image model's (so its
    weights load as they are) and whose memory attention's RoPE grid matches its input size (S/16)."""
    from transformers import Sam2VideoConfig
    c = image_model.config
    size = c.prompt_encoder_config.image_size
    return Sam2VideoConfig(vision_config=c.vision_config.to_dict(),
                           prompt_encoder_config=c.prompt_encoder_config.to_dict(),
                           mask_decoder_config=c.mask_decoder_config.to_dict(), image_size=size,
                           memory_attention_rope_feat_sizes=[size // 16, size // 16], **overrides)


def build_video_model(image_model: nn.Module, *, checkpoint: Path | None = None, seed: int = 0) -> nn.Module:
    """``Sam2VideoModel`` around ``image_model``'s parts: its ``vision_encoder`` module itself (float, quantized or on a
    runtime), and its prompt encoder, mask decoder, shared image embedding and no-memory embedding (copied). The
    memory modules (memory attention, memory encoder, object pointer projections, temporal embeddings) come from
    ``checkpoint`` (a ``facebook/sam2.1-*`` transformers checkpoint holds them) or, without one, seeded random
    weights (``seed``; the offline mode, which every report built from it must say). Random weights leave the
    object-score head's output near 0 with a random sign, so the tracker would call the object absent on the prompt
    frame and every mask would be empty (J&F trivially 1); the random model's head gets an output bias of +10
    (objects always present), which a trained checkpoint decides for itself. Raises ValueError when the image
    model's parts do not fit the video model."""
    from transformers import Sam2VideoModel
    cfg = video_config(image_model)
    if checkpoint is not None:
        video, info = Sam2VideoModel.from_pretrained(str(checkpoint), config=cfg, torch_dtype=torch.float32,
                                                     output_loading_info=True)
        lacking = [k for k in info["missing_keys"] if not k.startswith("vision_encoder.")]
        if lacking:  # an image-only checkpoint (Sam2Model.save_pretrained): its tracker would be random
            raise ValueError(f"{checkpoint} holds no weights for SAM2's video modules ({lacking[0]} and "
                             f"{len(lacking) - 1} more are missing); use a facebook/sam2.1-* checkpoint (model "
                             "type sam2_video), which holds the memory attention and memory encoder")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            video = Sam2VideoModel(cfg)
    shared = {k: v for k, v in image_model.state_dict().items() if not k.startswith("vision_encoder.")}
    missing = [k for k in shared if k not in video.state_dict()]
    if missing:
        raise ValueError(f"the image model's {missing[0]} has no place in Sam2VideoModel ({len(missing)} such keys)")
    video.load_state_dict(shared, strict=False)
    video.vision_encoder = image_model.vision_encoder
    if checkpoint is None:
        with torch.no_grad():
            video.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(RANDOM_OBJECT_SCORE)
    return video.eval()


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt on the prompt frame, in the model's size×size frame: points [P, 2] (x, y) and labels [P]
    (1 positive, 0 negative, 2/3 a box's corners)."""
    obj_id: int
    points: np.ndarray
    labels: np.ndarray


@dataclass
class TrackedFrame:
    index: int               # the frame's index in the clip
    masks: torch.Tensor      # bool [n_objects, H, W], in the order of the prompts
    encoder_s: float         # seconds in vision_encoder
    total_s: float           # seconds of the whole frame (preprocessing excluded)

    @property
    def per_object_s(self) -> float:
        """Everything but the encoder: decoders, memory attention and memory encoder of all objects."""
        return self.total_s - self.encoder_s

    def timing(self) -> dict:
        return {"frame": self.index, "encoder_s": self.encoder_s, "per_object_s": self.per_object_s}


def median_times(rows: list[dict]) -> dict:
    """Median ``encoder_s`` and ``per_object_s`` of per-frame rows (``TrackedFrame.timing()``), the prompt frame
    (the first row) left out when there are others: it has no memory to attend to."""
    import statistics
    timed = rows[1:] or rows
    return {k: statistics.median(r[k] for r in timed) for k in ("encoder_s", "per_object_s")}


def _sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a clock read measures work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardClock:
    """Seconds spent in a module's forward, summed since the last ``take()`` (forward pre/post hooks; on CUDA each
    hook synchronizes first)."""

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu"):
        self.spent, self._t0, self.device = 0.0, 0.0, torch.device(device)
        self._hooks = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop)]

    def _start(self, *_):
        _sync(self.device)
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        _sync(self.device)
        self.spent += time.perf_counter() - self._t0

    def take(self) -> float:
        s, self.spent = self.spent, 0.0
        return s

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def _forget(session, frame_idx: int, keep: int) -> None:
    """Drop what the next frames never read: decoded frames but the current one, and non-conditioning outputs
    older than ``keep`` frames (the model reads num_maskmem − 1 memories and max_object_pointers_in_encoder − 1
    object pointers back), so memory stays bounded on long clips."""
    for i in [i for i in session.processed_frames if i != frame_idx]:
        del session.processed_frames[i]
    for per_obj in session.output_dict_per_obj.values():
        old = [i for i in per_obj["non_cond_frame_outputs"] if i <= frame_idx - keep]
        for i in old:
            del per_obj["non_cond_frame_outputs"][i]


def track(model: nn.Module, frames: Iterable, prompts: list[ObjectPrompt], prompt_frame: int = 0
          ) -> Iterator[TrackedFrame]:
    """Track ``prompts``' objects through ``frames`` (RGB PIL images, all of one size) with ``model``
    (``build_video_model``'s), streaming from ``prompt_frame`` on. Yields one ``TrackedFrame`` per frame from
    ``prompt_frame``: each object's mask at the frame's size (the low-resolution logits upsampled bilinearly,
    half-pixel centres, thresholded at 0, as the image path)."""
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession
    if not prompts:
        raise ValueError("no objects to track: give at least one prompt")
    size = model.config.image_size
    param = model.no_memory_embedding  # the video model's own parameter: its device and dtype
    keep = max(model.config.num_maskmem, model.config.max_object_pointers_in_encoder)
    clock = ForwardClock(model.vision_encoder, param.device)
    session = None
    try:
        for i, im in enumerate(frames):
            if i < prompt_frame:
                continue
            if session is not None and im.size != (session.video_width, session.video_height):
                raise ValueError(f"frame {i} is {im.width}×{im.height}, the clip's first tracked frame "
                                 f"{session.video_width}×{session.video_height}: all frames must have one size")
            pixels = normalize(resize_uint8(im, size)).to(param.device, param.dtype)
            _sync(param.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                if session is None:
                    session = Sam2VideoInferenceSession(
                        video_height=im.height, video_width=im.width, inference_device=param.device,
                        inference_state_device=param.device, video_storage_device=param.device, dtype=param.dtype)
                    session.add_new_frame(pixels, i)
                    for p in prompts:
                        session.add_point_inputs(session.obj_id_to_idx(p.obj_id), i, {
                            "point_coords": torch.from_numpy(np.asarray(p.points, np.float32))[None, None],
                            "point_labels": torch.from_numpy(np.asarray(p.labels, np.int32))[None, None]})
                    session.obj_with_new_inputs = [p.obj_id for p in prompts]
                    out = model(session, frame_idx=i)
                else:
                    out = model(session, frame=pixels, frame_idx=i)
                logits = torch.nn.functional.interpolate(out.pred_masks.float(), size=(im.height, im.width),
                                                         mode="bilinear", align_corners=False)
            _sync(param.device)
            total = time.perf_counter() - t0
            _forget(session, i, keep)
            yield TrackedFrame(i, (logits[:, 0] > 0).cpu(), clock.take(), total)
    finally:
        clock.close()
    if session is None:
        raise ValueError(f"the clip has no frame {prompt_frame} (it ended before the prompt frame)")


def jf_scores(reference: list[TrackedFrame], tracked: list[TrackedFrame]) -> dict:
    """DAVIS's J&F of ``tracked`` against ``reference`` (the same clip, prompts and frames): per frame and object
    J (region IoU) and F (boundary, ``metrics.boundary_f``) on every frame; their means over the frames after the
    prompt frame (DAVIS likewise leaves out the frame whose mask is given; the prompt frame is an image-level
    comparison with no memory; its evaluation script also drops the clip's last frame, kept here), J&F =
    (mean J + mean F) / 2, each object's mean J and F, and how many scored (frame, object) pairs had an object in
    neither mask (scored 1)."""
    from ..algorithms.metrics import davis_jf
    if [f.index for f in reference] != [f.index for f in tracked]:
        raise ValueError("the two trackings cover different frames")
    J, F, empty = [], [], []
    for r, t in zip(reference, tracked):
        pairs = [davis_jf(a, b) for a, b in zip(t.masks, r.masks)]
        J.append([j for j, _ in pairs])
        F.append([f for _, f in pairs])
        empty.append(sum(int(not (a.any() or b.any())) for a, b in zip(t.masks, r.masks)))
    s = slice(1, None) if len(J) > 1 else slice(None)
    mj, mf = float(np.mean(J[s])), float(np.mean(F[s]))
    return {"J": J, "F": F, "mean_J": mj, "mean_F": mf, "JF": (mj + mf) / 2, "both_empty": sum(empty[s]),
            "object_J": np.mean(J[s], axis=0).tolist(), "object_F": np.mean(F[s], axis=0).tolist(),
            "scored_frames": [f.index for f in reference][s]}
