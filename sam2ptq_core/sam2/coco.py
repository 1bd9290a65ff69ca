"""COCO instance annotations (pycocotools): ground-truth box prompts and masks for the evaluation."""
from __future__ import annotations

import contextlib
import io

import torch

__all__ = ["load_coco", "gt_prompts"]


def load_coco(path: str):
    """(COCO object, {file name: image id}) of a COCO instances file."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO(path)
    return coco, {im["file_name"]: im["id"] for im in coco.dataset.get("images", [])}


def gt_prompts(coco, image_id: int, max_anns: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """GT boxes (xyxy) and masks of an image's non-crowd annotations with a non-empty mask."""
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a.get("area", 1) > 0]
    boxes, masks = [], []
    for a in anns[:max_anns]:
        m = torch.from_numpy(coco.annToMask(a)).bool()
        if m.any():
            x, y, w, h = a["bbox"]
            boxes.append([x, y, x + w, y + h])
            masks.append(m)
    if not boxes:
        return torch.zeros(0, 4), torch.zeros(0, 1, 1, dtype=torch.bool)
    return torch.tensor(boxes, dtype=torch.float32), torch.stack(masks)
