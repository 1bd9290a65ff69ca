"""Evaluation of a quantized SAM2 against its float model: encoder fidelity and mask agreement.

Prompts per image: a ``p``×``p`` grid of single foreground points (cell centres), then one box per point prompt,
taken from the float model's mask for that point (boxes of empty masks are skipped). Masks: the 256²-style low-res
logits upsampled bilinearly to the original image size, > 0. Mask IoU of quantized vs float; optional ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms.metrics import cosine, mask_iou, sqnr_db
from .images import scale_points

__all__ = ["ImageEval", "point_grid", "masks_to_boxes", "encode", "predict_masks", "evaluate_image", "evaluate_images",
           "summarize", "prompt_ious"]

LEVELS = ("fpn0", "fpn1", "embedding")  # stride 4, 8, 16; the last is what the mask decoder attends to


@dataclass
class ImageEval:
    """Per-image results: encoder metrics per level, IoU per prompt, and masks for overlays."""
    sqnr: dict[str, float]
    cos: dict[str, float]
    point_iou: torch.Tensor
    box_iou: torch.Tensor
    fp_masks: torch.Tensor = field(repr=False)
    q_masks: torch.Tensor = field(repr=False)
    points: torch.Tensor = field(repr=False)
    gt_fp_iou: torch.Tensor | None = None   # IoU with ground-truth masks for GT-box prompts (float model)
    gt_q_iou: torch.Tensor | None = None    # the same for the quantized model


def point_grid(width: int, height: int, per_side: int) -> torch.Tensor:
    """[per_side², 2] (x, y) cell centres in original pixels."""
    xs = (torch.arange(per_side, dtype=torch.float32) + 0.5) * width / per_side
    ys = (torch.arange(per_side, dtype=torch.float32) + 0.5) * height / per_side
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=-1)


def masks_to_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (x1, y1, x2, y2) [N, 4] of boolean masks [N, H, W] and a bool [N] of non-empty masks."""
    n, h, w = masks.shape
    keep = masks.flatten(1).any(1)
    ys = torch.arange(h).view(1, h, 1).expand(n, h, w)
    xs = torch.arange(w).view(1, 1, w).expand(n, h, w)
    big = torch.iinfo(torch.long).max
    x1 = torch.where(masks, xs, big).flatten(1).amin(1)
    y1 = torch.where(masks, ys, big).flatten(1).amin(1)
    x2 = torch.where(masks, xs, -1).flatten(1).amax(1) + 1
    y2 = torch.where(masks, ys, -1).flatten(1).amax(1) + 1
    return torch.stack([x1, y1, x2, y2], 1).float(), keep


@torch.inference_mode()
def encode(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """FPN levels, high → low resolution; the last is the image embedding the mask decoder attends to."""
    return [e.float() for e in model.get_image_embeddings(pixels)]


@torch.inference_mode()
def predict_masks(model: nn.Module, embeddings: list[torch.Tensor], size: int, orig_hw: tuple[int, int],
                  points: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean masks [N, H, W] at the original size for N point prompts (or N boxes), in original pixels."""
    h, w = orig_hw
    dev, dt = embeddings[0].device, next(model.parameters()).dtype
    emb = [e.to(dt) for e in embeddings]
    if points is not None:
        pts = scale_points(points, w, h, size).to(dev, dt).view(1, -1, 1, 2)
        labels = torch.ones(1, pts.shape[1], 1, dtype=torch.long, device=dev)
        out = model(image_embeddings=emb, input_points=pts, input_labels=labels, multimask_output=False)
    else:
        bx = scale_points(boxes.view(-1, 2, 2), w, h, size).to(dev, dt).view(1, -1, 4)
        out = model(image_embeddings=emb, input_boxes=bx, multimask_output=False)
    logits = out.pred_masks[0, :, 0].float()
    return F.interpolate(logits[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0].cpu() > 0


def evaluate_image(fp: nn.Module, q: nn.Module, pixels: torch.Tensor, orig_hw: tuple[int, int], size: int,
                   per_side: int, gt: tuple[torch.Tensor, torch.Tensor] | None = None) -> ImageEval:
    """Compare float and quantized SAM2 on one preprocessed image [1, 3, S, S]. ``gt`` = (boxes [N, 4] xyxy in
    original pixels, masks [N, H, W] bool): both models are prompted with the boxes and scored against the masks."""
    fp_lv = encode(fp, pixels)
    q_lv = encode(q, pixels.to(next(q.parameters()).dtype))
    sq = {n: sqnr_db(a, b) for n, a, b in zip(LEVELS, fp_lv, q_lv)}
    co = {n: cosine(a, b) for n, a, b in zip(LEVELS, fp_lv, q_lv)}
    h, w = orig_hw
    pts = point_grid(w, h, per_side)
    fp_m = predict_masks(fp, fp_lv, size, orig_hw, points=pts)
    q_m = predict_masks(q, q_lv, size, orig_hw, points=pts)
    p_iou = mask_iou(fp_m, q_m)
    boxes, keep = masks_to_boxes(fp_m)
    b_iou = torch.zeros(0, dtype=torch.float64)
    if keep.any():
        fb = predict_masks(fp, fp_lv, size, orig_hw, boxes=boxes[keep])
        qb = predict_masks(q, q_lv, size, orig_hw, boxes=boxes[keep])
        b_iou = mask_iou(fb, qb)
    ev = ImageEval(sq, co, p_iou, b_iou, fp_m, q_m, pts)
    if gt is not None and len(gt[0]):
        ev.gt_fp_iou = mask_iou(predict_masks(fp, fp_lv, size, orig_hw, boxes=gt[0]), gt[1])
        ev.gt_q_iou = mask_iou(predict_masks(q, q_lv, size, orig_hw, boxes=gt[0]), gt[1])
    return ev


def evaluate_images(fp: nn.Module, q: nn.Module, items, size: int, per_side: int, num_overlays: int,
                    progress=None) -> tuple[list[ImageEval], list[dict]]:
    """Evaluate every held-out image. ``items`` yields (path, uint8 pixels [3, S, S], original (H, W), gt or None);
    returns the per-image results and overlays of the worst point prompt for the first ``num_overlays`` images."""
    import numpy as np

    from .images import load_rgb, normalize
    dev, dt = next(fp.parameters()).device, next(fp.parameters()).dtype
    per_img, overlays = [], []
    for i, (path, x, hw, gt) in enumerate(items):
        ev = evaluate_image(fp, q, normalize(x[None]).to(dev, dt), hw, size, per_side, gt)
        per_img.append(ev)
        if i < num_overlays:
            j = int(torch.argmin(ev.point_iou))
            overlays.append({"image": np.asarray(load_rgb(path)), "fp": ev.fp_masks[j].numpy(),
                             "q": ev.q_masks[j].numpy(), "point": ev.points[j].numpy(),
                             "iou": float(ev.point_iou[j]), "title": f"{path.name}: worst point prompt"})
        if progress:
            progress(i + 1, what=path.name)
    return per_img, overlays


def _summary(ious: list[torch.Tensor]) -> dict:
    v = torch.cat(ious) if ious else torch.zeros(0, dtype=torch.float64)
    n = int(v.numel())
    return {"num": n, "miou": float(v.mean()) if n else float("nan"),
            "frac_below_0_9": float((v < 0.9).double().mean()) if n else float("nan")}


def _mean(d: list[dict]) -> dict:
    return {k: sum(x[k] for x in d) / len(d) for k in d[0]} if d else {}


def summarize(per_img: list[ImageEval]) -> dict:
    """The headline numbers of a list of per-image results: encoder SQNR/cosine per level, mask agreement,
    ground truth (when prompted with GT boxes)."""
    pts, bxs = [e.point_iou for e in per_img], [e.box_iou for e in per_img]
    allp = _summary(pts + bxs)
    gt = [e for e in per_img if e.gt_fp_iou is not None]
    extra = {"gt": {"miou_fp": float(torch.cat([e.gt_fp_iou for e in gt]).mean()),
                    "miou_quant": float(torch.cat([e.gt_q_iou for e in gt]).mean()),
                    "num": int(sum(len(e.gt_fp_iou) for e in gt)), "images": len(gt)}} if gt else {}
    enc = {"sqnr_db": _mean([e.sqnr for e in per_img]), "cosine": _mean([e.cos for e in per_img])}
    return {**extra, "encoder": enc,
            "masks": {"miou_vs_fp": allp["miou"], "frac_iou_below_0_9": allp["frac_below_0_9"],
                      "num_prompts": allp["num"], "points": _summary(pts), "boxes": _summary(bxs)}}


def prompt_ious(per_img: list[ImageEval]) -> dict[str, list[float]]:
    """Every prompt's IoU by prompt kind (for the histogram)."""
    return {"points": torch.cat([e.point_iou for e in per_img]).tolist(),
            "boxes": torch.cat([e.box_iou for e in per_img]).tolist()}
