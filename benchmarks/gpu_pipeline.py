"""One pipeline run on the GPU machine, measured: per-stage seconds, peak GPU memory, peak host RSS.

    python3 benchmarks/gpu_pipeline.py tiny w4a8 6 OUT_DIR       # smoke: tiny W4A8 on 6 images
    python3 benchmarks/gpu_pipeline.py large w4a4 128 OUT_DIR    # large W4A4 SVDQuant on 128 images at 1024², bf16

RANDOM WEIGHTS (the machine cannot download checkpoints). Calibration images are the bundled photos, mirrored and
cropped as benchmarks/pipeline.py makes them. Writes OUT_DIR/gpu_<model>_<precision>.json.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    import quantize_sam2
    from benchmarks.pipeline import augmented_images
    name, prec, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    imgs = out / f"images_{n}"
    augmented_images(imgs, n + 4)  # n for calibration, 4 held out
    args = ["--config", f"configs/hiera_{name}_{prec}.yaml", "--model.random_init", "true", "--model.device", "cuda",
            "--model.dtype", "bfloat16", "--quant.calib.path", str(imgs), "--quant.calib.num_samples", str(n),
            "--quant.eval.num_samples", "4", "--cache.root", f"/tmp/sam2ptq-cache-{name}-{prec}",
            "--output.root", str(out / "runs"), "--output.job", f"{name}_{prec}", "-v"]
    t = time.perf_counter()
    rc = quantize_sam2.main(args)
    wall = time.perf_counter() - t
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "model": name, "precision": prec,
           "images": n, "rc": rc, "wall_s": round(wall, 1),
           "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    stages = out / "runs" / f"{name}_{prec}" / "stages.json"
    if stages.is_file():
        res["stages_s"] = {k: v.get("seconds") for k, v in json.loads(stages.read_text()).items()}
        m = json.loads((stages.parent / "metrics.json").read_text())
        res["sqnr_embedding_db"], res["miou_vs_fp"] = m["encoder"]["sqnr_db"]["embedding"], m["masks"]["miou_vs_fp"]
    (out / f"gpu_{name}_{prec}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
