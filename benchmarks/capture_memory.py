"""Capture cost and host memory: tiny at 1024², N images, seconds per image and peak RSS (flat in N?).

    python benchmarks/capture_memory.py 4 32
Each N runs in a fresh subprocess so ru_maxrss is that run's own peak.
"""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from sam2ptq_core.sam2.capture import capture_stats
from sam2ptq_core.sam2.loading import build_random
n = int(sys.argv[1])
m = build_random("tiny", 0, 1024)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
g = torch.Generator().manual_seed(0)
batches = (torch.randn(1, 3, 1024, 1024, generator=g) for _ in range(n))
t = time.perf_counter()
stats = capture_stats(m, batches, sample_tokens=4096, seed=0)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"images": n, "s_per_image": dt / n, "peak_rss_mb": peak,
                  "rss_after_model_mb": base / 1024, "layers": len(stats)}))
"""


def main() -> None:
    rows = []
    for n in [int(v) for v in sys.argv[1:]] or [4, 32]:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if len(rows) >= 2:
        print(f"peak RSS ratio {rows[-1]['images']} vs {rows[0]['images']} images: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
