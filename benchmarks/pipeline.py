"""End-to-end pipeline timing: per-stage wall time (from the stage manifests), total wall time and peak RSS, for a
first run on an empty cache and a fully cached rerun, each through the CLI (Prefect start-up included).

    python benchmarks/pipeline.py demo          # configs/demo.yaml
    python benchmarks/pipeline.py tiny16        # tiny @ 1024², 16 calibration images, W4A8 smooth + GPTQ
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["fetch_model", "build_calibration_set", "capture_activations", "rotate", "smooth", "gptq_lowrank",
          "evaluate"]


def augmented_images(dst: Path, n: int) -> None:
    """n distinct photos from the bundled ten: originals, mirrors and crops (there are only ten real ones)."""
    src = sorted(p for p in (ROOT / "examples/images").iterdir() if p.suffix in (".jpg", ".png"))
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.open(src[i % len(src)]).convert("RGB")
        if i // len(src) == 1:
            im = ImageOps.mirror(im)
        elif i // len(src) >= 2:
            w, h = im.size
            im = im.crop((w // 8, h // 8, w - w // 8, h - h // 8))
        im.save(dst / f"img{i:03d}.jpg", quality=90)


def run_cli(args: list[str], env: dict) -> tuple[float, float]:
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "quantize_sam2.py"), *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def stage_seconds(out: Path, cache: Path) -> dict:
    st = json.loads((out / "stages.json").read_text())
    res = {}
    for s in STAGES:
        man = json.loads((next((cache / s).glob(st[s]["key"][:24])) / "manifest.json").read_text())
        res[s] = man["timing"]["seconds"]
    return res


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "demo"
    tmp = Path(tempfile.mkdtemp(prefix="sam2ptq-bench-"))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    args = ["--config", "configs/demo.yaml", "--cache.root", str(tmp / "cache"), "--output.root", str(tmp / "out")]
    if which == "tiny16":
        augmented_images(tmp / "images", 20)
        args += ["--quant.calib.path", str(tmp / "images"), "--quant.calib.num_samples", "16",
                 "--quant.calib.sample_tokens", "1024", "--quant.smooth.proj.num_grids", "10",
                 "--quant.eval.num_samples", "4", "--output.job", "tiny16"]
    first, rss1 = run_cli(args, env)
    out = next((tmp / "out").iterdir())
    stages = stage_seconds(out, tmp / "cache")
    second, rss2 = run_cli(args, env)
    reused = json.loads((out / "stages.json").read_text())
    result = {"config": which, "first_run_s": round(first, 1), "cached_rerun_s": round(second, 1),
              "stage_s": stages, "peak_rss_mb": round(max(rss1, rss2)),
              "all_reused_on_rerun": all(v["reused"] for v in reused.values())}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
