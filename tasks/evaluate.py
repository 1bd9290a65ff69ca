"""Stage 7: float vs quantized SAM2 on held-out images — encoder SQNR, mask IoU, per-layer errors, report."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import config_hash, group_size_of
from sam2ptq_core.data import load_rgb, normalize
from sam2ptq_core.evaluate import evaluate_image
from sam2ptq_core.export.report import write_report
from sam2ptq_core.qmodel import quantize_model
from sam2ptq_core.recipe import artifacts_from_saved
from sam2ptq_core.store import file_sha256

from ._common import Progress, cfg_of, load_fp_model, manifest_of, run_stage, store_of, to_run_dtype
from .calibration import eval_images, folder_digest, preprocess

STAGE = "evaluate"


def build_quantized(c, store, fp_model, smooth_ref, gptq_ref):
    """A deep copy of the float model with its trunk linears swapped for QuantLinear from the stored artifacts."""
    qlayers = torch.load(manifest_of(store, gptq_ref).path("qlayers.pt"), weights_only=True)
    scales = torch.load(manifest_of(store, smooth_ref).path("smooth.pt"), weights_only=True)
    rot = json.loads(manifest_of(store, smooth_ref).path("rotation_choice.json").read_text())
    arts = artifacts_from_saved(qlayers, scales, rot)
    ip = c.quant.ipts
    return quantize_model(copy.deepcopy(fp_model), arts, ip.dtype, group_size_of(ip.group_shapes))


def _summary(ious: list[torch.Tensor]) -> dict:
    v = torch.cat(ious) if ious else torch.zeros(0, dtype=torch.float64)
    n = int(v.numel())
    return {"num": n, "miou": float(v.mean()) if n else float("nan"),
            "frac_below_0_9": float((v < 0.9).double().mean()) if n else float("nan")}


def _mean(d: list[dict]) -> dict:
    return {k: float(np.mean([x[k] for x in d])) for k in d[0]} if d else {}


def load_coco(path: str):
    """(COCO object, {file name: image id}) of a COCO instances file (pycocotools)."""
    import contextlib
    import io

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


def _run_images(c, store, fpm, qm, paths, coco=None) -> tuple[list, list[dict]]:
    """Evaluate every held-out image; overlays of the worst point prompt for the first few."""
    dev, dt = next(fpm.parameters()).device, next(fpm.parameters()).dtype
    digest = folder_digest(store, c.quant.eval.path or c.quant.calib.path)
    size = c.quant.calib.image_size
    prog = Progress(STAGE, len(paths), "image")
    per_img, overlays = [], []
    for i, p in enumerate(paths):
        x, hw = preprocess(store, p, digest[str(p)], size)
        gt = gt_prompts(coco[0], coco[1][p.name]) if coco else None
        ev = evaluate_image(fpm, qm, normalize(x[None]).to(dev, dt), hw, size, c.quant.eval.points_per_side, gt)
        per_img.append(ev)
        if i < c.quant.eval.num_overlays:
            j = int(torch.argmin(ev.point_iou))
            overlays.append({"image": np.asarray(load_rgb(p)), "fp": ev.fp_masks[j].numpy(),
                             "q": ev.q_masks[j].numpy(), "point": ev.points[j].numpy(),
                             "iou": float(ev.point_iou[j]), "title": f"{p.name}: worst point prompt"})
        prog(i + 1, what=p.name)
    prog.close()
    return per_img, overlays


def _metrics(c, fp, paths, per_img, layer_info) -> dict:
    pts, bxs = [e.point_iou for e in per_img], [e.box_iou for e in per_img]
    allp = _summary(pts + bxs)
    q = c.quant
    a_bits = q.ipts.dtype[-1] if q.ipts.dtype else "16"
    gt = [e for e in per_img if e.gt_fp_iou is not None]
    extra = {"gt": {"miou_fp": float(torch.cat([e.gt_fp_iou for e in gt]).mean()),
                    "miou_quant": float(torch.cat([e.gt_q_iou for e in gt]).mean()),
                    "num": int(sum(len(e.gt_fp_iou) for e in gt)), "images": len(gt)}} if gt else {}
    return {  # random_weights first: whoever opens the file sees it before any number
        "random_weights": fp.random_weights, "model": c.model.name, "source": fp.source, **extra,
        "config_hash": config_hash(c),
        "quant": f"W{q.wgts.dtype[-1]}A{a_bits} ({q.wgts.dtype} weights, {q.ipts.dtype or 'float'} activations)",
        "eval_images": len(paths), "eval_files": [str(p) for p in paths],
        "encoder": {"sqnr_db": _mean([e.sqnr for e in per_img]), "cosine": _mean([e.cos for e in per_img])},
        "masks": {"miou_vs_fp": allp["miou"], "frac_iou_below_0_9": allp["frac_below_0_9"],
                  "num_prompts": allp["num"], "points": _summary(pts), "boxes": _summary(bxs)},
        "layers": layer_info["layers"], "gptq_fallbacks": sorted(layer_info["fallbacks"]),
    }


@task(name=STAGE, cache_policy=NO_CACHE)
def evaluate(cfg: dict, model_ref: dict, calib_ref: dict, smooth_ref: dict, gptq_ref: dict) -> dict:
    c = cfg_of(cfg)
    store = store_of(c)

    def build(tmp):
        fp = load_fp_model(c, manifest_of(store, model_ref))
        qm = build_quantized(c, store, fp.model, smooth_ref, gptq_ref)
        sources = json.loads(manifest_of(store, calib_ref).path("sources.json").read_text())
        coco = load_coco(c.quant.eval.annotations) if c.quant.eval.annotations else None
        paths = eval_images(c, store, {s["path"] for s in sources}, set(coco[1]) if coco else None)
        per_img, overlays = _run_images(c, store, to_run_dtype(fp.model, c), to_run_dtype(qm, c), paths, coco)
        layer_info = json.loads(manifest_of(store, gptq_ref).path("layers.json").read_text())
        metrics = _metrics(c, fp, paths, per_img, layer_info)
        ious = {"points": torch.cat([e.point_iou for e in per_img]).tolist(),
                "boxes": torch.cat([e.box_iou for e in per_img]).tolist()}
        write_report(tmp, metrics, overlays, ious)
        return {"miou_vs_fp": metrics["masks"]["miou_vs_fp"], "random_weights": fp.random_weights}
    up = {"fetch_model": model_ref["key"], "build_calibration_set": calib_ref["key"], "gptq_lowrank": gptq_ref["key"]}
    ann = c.quant.eval.annotations
    return run_stage(STAGE, c, up, build, lambda: {"annotations_sha256": file_sha256(Path(ann))} if ann else {})
