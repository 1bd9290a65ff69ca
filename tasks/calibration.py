"""Stage 2: choose calibration (and held-out evaluation) images and store them resized as uint8."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sam2ptq_core.config import RunConfig
from sam2ptq_core.data import list_images, load_rgb, resize_uint8, select_images
from sam2ptq_core.store import StageStore, file_sha256

from ._common import Progress, cfg_of, run_stage, store_of

STAGE = "build_calibration_set"


def folder_digest(store: StageStore, folder: str) -> dict[str, str]:
    """Content sha256 of every image in ``folder``, memoised in diskcache by (path, size, mtime)."""
    cache = store.preprocess_cache()
    out = {}
    for f in list_images(folder):
        st = f.stat()
        k = ("sha", str(f.resolve()), st.st_size, st.st_mtime_ns)
        h = cache.get(k)
        if h is None:
            h = file_sha256(f)
            cache.set(k, h)
        out[str(f)] = h
    return out


def preprocess(store: StageStore, path: Path, sha: str, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resized uint8 [3, size, size] and the original (H, W), through the evictable per-image cache."""
    cache = store.preprocess_cache()
    k = ("img", sha, size)
    hit = cache.get(k)
    if hit is not None:
        return torch.frombuffer(bytearray(hit[0]), dtype=torch.uint8).view(3, size, size).clone(), tuple(hit[1])
    im = load_rgb(path)
    x = resize_uint8(im, size)
    cache.set(k, (x.numpy().tobytes(), (im.height, im.width)))
    return x, (im.height, im.width)


def eval_images(c: RunConfig, store: StageStore, calib_paths: set[str], only_names: set[str] | None = None
                ) -> list[Path]:
    ev = c.quant.eval
    folder = ev.path or c.quant.calib.path
    paths, _ = select_images(folder, ev.num_samples, c.seed + 1, exclude=set() if ev.path else calib_paths,
                             what="evaluation (held out from calibration)", only_names=only_names)
    return paths


@task(name=STAGE, cache_policy=NO_CACHE)
def build_calibration_set(cfg: dict) -> dict:
    c = cfg_of(cfg)
    store, calib = store_of(c), c.quant.calib
    digest = {}

    def key_extra():
        digest.update(folder_digest(store, calib.path))
        return {"files": digest}

    def build(tmp):
        paths, skipped = select_images(calib.path, calib.num_samples, c.seed)
        prog = Progress(STAGE, len(paths), "image")
        imgs, records = [], []
        for i, p in enumerate(paths):
            x, hw = preprocess(store, p, digest[str(p)], calib.image_size)
            imgs.append(x)
            records.append({"path": str(p), "size": p.stat().st_size, "sha256": digest[str(p)], "hw": hw})
            prog(i + 1, what=p.name)
        prog.close()
        torch.save(torch.stack(imgs), tmp / "images.pt")
        (tmp / "sources.json").write_text(json.dumps(records, indent=1))
        return {"num_images": len(paths), "skipped": skipped, "image_size": calib.image_size}
    return run_stage(STAGE, c, {}, build, key_extra)
