"""Calibration stage time against the folder size: the key hashes the listing and the chosen images only.

Folders of 10, 500 and 5000 images (hard links to the bundled photos), 8 calibration images at 256², a fresh stage
store for each, the stage run through its task function (no Prefect server).

    python benchmarks/calibration_scaling.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2ptq_core.config import load_config  # noqa: E402
from tasks.calibration import build_calibration_set  # noqa: E402


def main() -> None:
    photos = sorted((ROOT / "examples/images").glob("*.jpg"))
    rows = []
    warm = load_config(ROOT / "configs/demo.yaml", ["quant.calib.num_samples=2", "quant.calib.image_size=64",
                                                    f"cache.root={tempfile.mkdtemp()}"])
    build_calibration_set.fn(warm.model_dump(mode="json"))  # imports and first-call costs out of the numbers
    for n in (10, 500, 5000):
        tmp = Path(tempfile.mkdtemp(prefix=f"sam2ptq-calib-{n}-"))
        folder = tmp / "images"
        folder.mkdir()
        for i in range(n):
            os.link(photos[i % len(photos)], folder / f"{i:05d}.jpg")
        cfg = load_config(ROOT / "configs/demo.yaml", [f"quant.calib.path={folder}", "quant.calib.num_samples=8",
                                                       "quant.calib.image_size=256", f"cache.root={tmp / 'cache'}"])
        t = time.perf_counter()
        build_calibration_set.fn(cfg.model_dump(mode="json"))
        first = time.perf_counter() - t
        t = time.perf_counter()
        build_calibration_set.fn(cfg.model_dump(mode="json"))
        rows.append({"images_in_folder": n, "first_s": round(first, 3), "cached_s": round(time.perf_counter() - t, 3)})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
