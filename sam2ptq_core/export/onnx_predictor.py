"""SAM2 on the ONNX pair with numpy and pillow only (no torch, no transformers): the encoder and decoder files of an
output tree (``onnx_interface``) on OpenVINO or ONNX Runtime (``runtimes``), one image, point and box prompts.

    p = OnnxSam2.from_tree("outputs/sam2/demo_tiny_w4a8", runtime="onnxruntime")
    p.set_image(Image.open("photo.jpg"))                 # preprocess + encoder, once per image
    mask = p.predict(Prompt(points=[(320, 240)], labels=[1])).mask   # bool [H, W]

Preprocessing is ``sam2/images.py``'s (PIL's bilinear resize to S×S, /255, ImageNet mean/std, in float32); the
prompt is one mask's: the points (label 1 positive, 0 negative) then the box's corners (labels 2, 3), in the S
frame; the mask is the multimask output with the highest predicted IoU, upsampled bilinearly (half-pixel centres,
as ``torch.nn.functional.interpolate(align_corners=False)``) to the image size and thresholded at 0, as
``sam2/evaluation.py::predict_masks`` does with the torch model's logits.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import runtimes
from .onnx_interface import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, find_pair
from .runtimes import Session

__all__ = ["MEAN", "STD", "Prompt", "Prediction", "OnnxSam2", "CannotOpen", "preprocess", "upsample_bilinear",
           "best_mask", "overlay"]

MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)  # = sam2/images.py MEAN, STD (tested)
STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)


@dataclass(frozen=True)
class Prompt:
    """One mask's prompt in original pixels: points (x, y) with labels (1 positive, 0 negative), and/or a box
    (x1, y1, x2, y2)."""
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def arrays(self, width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(point_coords [1, P, 2], point_labels [1, P]) float32 in the size×size frame: points, then the box's
        corners labelled 2 and 3 (the decoder appends SAM2's padding point itself)."""
        pts, lab = list(self.points), [float(v) for v in self.labels]
        if len(pts) != len(lab):
            raise ValueError(f"{len(pts)} points but {len(lab)} labels")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            pts += [(x1, y1), (x2, y2)]
            lab += [2.0, 3.0]
        if not pts:
            raise ValueError("a prompt needs at least one point or a box")
        xy = np.asarray(pts, dtype=np.float32) * np.array([size / width, size / height], dtype=np.float32)
        return xy[None], np.asarray(lab, dtype=np.float32)[None]


@dataclass(frozen=True)
class Prediction:
    mask: np.ndarray        # bool [H, W]
    iou: float              # the chosen mask's predicted IoU
    logits: np.ndarray      # [3, S/4, S/4], the decoder's multimask logits
    seconds: float          # decoder time


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image → [1, 3, size, size] float32: bilinear stretch (PIL, as ``images.resize_uint8``), /255,
    (x − MEAN) / STD (as ``images.normalize``)."""
    x = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    x = (x.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _axis(n_in: int, n_out: int):
    """Source indices and weights of a half-pixel bilinear resize along one axis (PyTorch's align_corners=False:
    src = (i + 0.5)·n_in/n_out − 0.5, clamped at 0)."""
    src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def upsample_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] → [height, width], bilinear with half-pixel centres (F.interpolate(mode="bilinear",
    align_corners=False) without antialiasing)."""
    r0, r1, wr = _axis(x.shape[0], height)
    c0, c1, wc = _axis(x.shape[1], width)
    rows = x[r0] * (1 - wr)[:, None] + x[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def best_mask(masks: np.ndarray, iou: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """masks [3, h, w] logits, iou [3] → (bool [height, width], index): the highest predicted IoU, upsampled, > 0."""
    k = int(np.argmax(iou))
    return upsample_bilinear(masks[k].astype(np.float32), height, width) > 0, k


class CannotOpen(Exception):
    """The runtime failed on ``path`` (unreadable, an operator it lacks, a failed compile): ``cause`` says why."""

    def __init__(self, path: Path, cause: Exception):
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause


def _open(path: Path, runtime: str, threads, precision: str, cache, inputs: list[str], outputs: list[str],
          what: str) -> Session:
    """``path`` on ``runtime``; CannotOpen when the runtime fails, ValueError (one line) when the file runs but is
    not the interface's ``what`` (a foreign ONNX file)."""
    try:
        session = runtimes.open_runtime(path, runtime, threads, precision, cache)  # by module: tests spy on it
    except runtimes.NoVnni:  # the file is fine, the CPU is not: its own message names the fix
        raise
    except Exception as e:  # whatever the runtime raises
        raise CannotOpen(path, e) from e
    if not session.has_interface(inputs, outputs):
        raise ValueError(f"{path} is not a SAM2 {what} in the apps' interface ({session.describe()}; want inputs "
                         f"{inputs}, outputs {outputs}); export the tree again")
    return session


class OnnxSam2:
    """The pair on one runtime. ``precision`` applies to the encoder (``onnx.json``'s precision_setting); the float
    decoder always runs in float32. Raises CannotOpen (the runtime failed on a file) or ValueError (a file that
    is not the interface's)."""

    def __init__(self, encoder: Path, decoder: Path, runtime: str = "onnxruntime", precision: str = "auto",
                 cache=None, threads: int | None = None):
        self.encoder = _open(Path(encoder), runtime, threads, precision, cache, ENCODER_INPUTS, ENCODER_OUTPUTS,
                             "encoder")
        self.decoder = _open(Path(decoder), runtime, threads, "f32", cache, DECODER_INPUTS, DECODER_OUTPUTS,
                             "decoder")
        self.size = int(self.encoder.input_shape[2])  # what apps read: inputs[0].shape[2:]
        self.features: list[np.ndarray] | None = None
        self.image_hw = (0, 0)

    @classmethod
    def from_tree(cls, run: Path, model_name: str, runtime: str = "onnxruntime", **kw) -> OnnxSam2:
        enc, dec = find_pair(Path(run) / "onnx", model_name)
        return cls(enc, dec, runtime, **kw)

    def set_image(self, image: Image.Image) -> float:
        """Encode ``image``; returns the seconds the encoder took (preprocessing excluded)."""
        x = preprocess(image, self.size)
        t0 = time.perf_counter()
        self.features = self.encoder(x)
        self.image_hw = (image.height, image.width)
        return time.perf_counter() - t0

    def predict(self, prompt: Prompt) -> Prediction:
        if self.features is None:
            raise ValueError("set_image first")
        hrf0, hrf1, emb = self.features
        h, w = self.image_hw
        coords, labels = prompt.arrays(w, h, self.size)
        s4 = self.size // 4
        t0 = time.perf_counter()
        masks, iou = self.decoder(emb, hrf0, hrf1, coords, labels, np.zeros((1, 1, s4, s4), np.float32),
                                  np.zeros(1, np.float32))
        dt = time.perf_counter() - t0
        mask, k = best_mask(masks[0], iou[0], h, w)
        return Prediction(mask, float(iou[0, k]), masks[0], dt)


def overlay(image: Image.Image, mask: np.ndarray, prompt: Prompt, path: Path, title: str = "") -> None:
    """``image`` with ``mask`` in translucent blue, positive points green, negative red, the box yellow; ``title``
    at the top."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    base[mask] = base[mask] * 0.5 + np.array([30, 144, 255], np.float32) * 0.5
    out = Image.fromarray(base.astype(np.uint8))
    d = ImageDraw.Draw(out)
    r = max(3, min(image.size) // 80)
    for (x, y), lab in zip(prompt.points, prompt.labels):
        d.ellipse((x - r, y - r, x + r, y + r), fill=(0, 200, 0) if lab == 1 else (220, 0, 0), outline="white")
    if prompt.box is not None:
        d.rectangle(prompt.box, outline=(255, 220, 0), width=max(1, r // 2))
    if title:
        d.text((4, 4), title, fill="white", stroke_width=2, stroke_fill="black")
    out.save(path, format="PNG")
