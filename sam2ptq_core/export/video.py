"""A quantized output tree inside SAM2's video predictor: clips in (PyAV), tracked masks out (DAVIS-style indexed
PNGs, an H.264 overlay clip), the encoder on torch (fake quantization) or on a graph runtime.

    model = video_model(run, "fake")             # Sam2VideoModel, its vision_encoder the tree's quantized one
    model = video_model(run, "onnxruntime")      # … the encoder is onnx/<stem>.video_encoder.onnx on the runtime
    for f in track(model, read_frames(clip).frames(), prompts): …   # clips.py, sam2/video.py

Everything but the encoder (prompt encoder, mask decoder, memory attention, memory encoder) runs in torch: the
video path needs transformers' ``Sam2VideoModel``, so ``predict --video`` imports torch on every runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .clips import VideoSource, open_av, read_frames
from .onnx_interface import pair_names
from .onnx_video import VIDEO_ENCODER_OUTPUTS

__all__ = ["RuntimeVisionEncoder", "VideoSource", "read_frames", "video_model", "float_video_model",
           "write_masks", "OverlayWriter", "PALETTE"]

PALETTE = [(0, 0, 0), (30, 144, 255), (255, 80, 40), (60, 200, 60), (240, 200, 0), (200, 60, 220), (0, 210, 210),
           (255, 140, 180), (140, 90, 40)]  # object k → PALETTE[1 + (k − 1) % 8]; 0 background (DAVIS PNGs)


class RuntimeVisionEncoder(nn.Module):
    """``Sam2VisionModel``'s interface on a graph runtime session of the video encoder file: pixel_values
    [1, 3, S, S] → ``Sam2VisionEncoderOutput`` with the raw ``fpn_hidden_states`` (high to low resolution) and
    their ``fpn_position_encoding``, computed by the float neck's own sine embedding (input-independent)."""

    def __init__(self, session, position_encoding: nn.Module):
        super().__init__()
        self.session, self.position_encoding = session, position_encoding
        self._pos: dict[tuple, torch.Tensor] = {}

    def _pos_of(self, f: torch.Tensor) -> torch.Tensor:
        key = tuple(f.shape)
        if key not in self._pos:
            self._pos[key] = self.position_encoding(f.shape, f.device, f.dtype).to(f.dtype)
        return self._pos[key]

    def forward(self, pixel_values: torch.Tensor, **_):
        from transformers.models.sam2.modeling_sam2 import Sam2VisionEncoderOutput
        outs = self.session(pixel_values.detach().float().cpu().numpy())
        feats = tuple(torch.from_numpy(np.ascontiguousarray(o)).to(pixel_values.device) for o in outs)
        return Sam2VisionEncoderOutput(last_hidden_state=None, fpn_hidden_states=feats,
                                       fpn_position_encoding=tuple(self._pos_of(f) for f in feats))


def _checkpoint(cfg):
    """The tree's real checkpoint directory (its memory modules), or None for a random-weights tree."""
    if cfg.model.random_init:
        return None
    from ..sam2.loading import resolve_checkpoint
    return resolve_checkpoint(cfg.model.name, cfg.model.path, cfg.model.revision)


def _runtime_encoder(run: Path, cfg, runtime: str, image_model: nn.Module, precision: str = "auto", cache=None):
    """The tree's video encoder file on ``runtime`` (written from the apps' encoder when the tree predates it)."""
    from . import runtimes
    from .onnx_video import write_video_encoder
    names = pair_names(cfg.model.name)
    f = run / "onnx" / names["video_encoder"]
    if not f.is_file():
        enc = run / "onnx" / names["encoder"]
        if not enc.is_file():
            raise ValueError(f"--runtime {runtime}: {run} has no onnx/ encoder; quantize with --onnx '{{}}' or use "
                             "--runtime fake")
        import atexit
        import shutil
        import tempfile
        tmp = tempfile.mkdtemp(prefix="sam2ptq-video-")  # a tree exported before the video file: cut it here
        atexit.register(shutil.rmtree, tmp, True)
        try:
            f = write_video_encoder(enc, Path(tmp) / f.name)
        except ImportError:
            raise ValueError(f"{run} predates its video encoder file; cutting it needs onnx: pip install -e "
                             "'.[onnx]' (or export the tree again)") from None
    session = runtimes.open_runtime(f, runtime, None, precision, cache)
    if not session.has_interface(["image"], VIDEO_ENCODER_OUTPUTS):
        raise ValueError(f"{f} is not a SAM2 video encoder ({session.describe()}); export the tree again")
    return RuntimeVisionEncoder(session, image_model.vision_encoder.neck.position_encoding)


def video_model(run: str | Path, runtime: str = "fake", precision: str = "auto", cache=None) -> nn.Module:
    """``Sam2VideoModel`` of an output tree: the tree's quantized encoder (``runtime`` "fake": QuantLinear in torch;
    "openvino" / "onnxruntime": the video encoder file on that runtime), the checkpoint's decoder and memory
    modules (seeded random ones for a random-weights tree, like the tree's own float parts)."""
    from ..config import load_config
    from ..sam2.video import build_video_model
    from .reader import load_quantized
    run = Path(run)
    cfg = load_config(run / "config.yaml")
    image_model = load_quantized(run)
    if runtime != "fake":
        image_model.vision_encoder = _runtime_encoder(run, cfg, runtime, image_model, precision, cache)
    return build_video_model(image_model, checkpoint=_checkpoint(cfg), seed=cfg.seed)


def float_video_model(run: str | Path) -> nn.Module:
    """The float ``Sam2VideoModel`` the tree was quantized from (the reference its tracking is scored against)."""
    from ..config import load_config
    from ..sam2.loading import load_model
    from ..sam2.video import build_video_model
    cfg = load_config(Path(run) / "config.yaml")
    m = cfg.model
    fp = load_model(m.name, path=m.path, revision=m.revision, random_init=m.random_init, seed=cfg.seed,
                    image_size=cfg.quant.calib.image_size, arch=m.arch).model
    return build_video_model(fp, checkpoint=_checkpoint(cfg), seed=cfg.seed)


def write_masks(d: Path, index: int, masks: np.ndarray, obj_ids: list[int]) -> Path:
    """``d/<index:05d>.png``: an indexed PNG (DAVIS's format) with pixel value k where object k is (later objects
    win where masks overlap), 0 elsewhere. ``masks`` bool [n, H, W]."""
    label = np.zeros(masks.shape[1:], np.uint8)
    for m, k in zip(masks, obj_ids):
        label[m] = k
    im = Image.fromarray(label, mode="P")
    im.putpalette([c for k in range(256) for c in PALETTE[0 if k == 0 else 1 + (k - 1) % 8]])
    path = d / f"{index:05d}.png"
    im.save(path, format="PNG")
    return path


def tint(frame: Image.Image, masks: np.ndarray, obj_ids: list[int], title: str = "") -> Image.Image:
    """``frame`` with each object's mask blended in its palette colour and ``title`` at the top."""
    from PIL import ImageDraw
    base = np.asarray(frame.convert("RGB"), dtype=np.float32)
    for m, k in zip(masks, obj_ids):
        base[m] = base[m] * 0.45 + np.array(PALETTE[1 + (k - 1) % 8], np.float32) * 0.55
    out = Image.fromarray(base.astype(np.uint8))
    if title:
        ImageDraw.Draw(out).text((4, 4), title, fill="white", stroke_width=2, stroke_fill="black")
    return out


class OverlayWriter:
    """An H.264 MP4 (PyAV, yuv420p, even frame size) of tinted frames."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        from fractions import Fraction
        av = open_av()
        self.path = path
        self.size = (size[0] // 2 * 2, size[1] // 2 * 2)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("h264", rate=Fraction(fps).limit_denominator(1000))
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"

    def add(self, image: Image.Image) -> None:
        av = open_av()
        im = image.crop((0, 0, *self.size))
        for packet in self.stream.encode(av.VideoFrame.from_image(im)):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
