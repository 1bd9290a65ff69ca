"""The demo against the local stage store and against an S3 store (moto's server on loopback): first run, cached
rerun on the same worker, and cached reruns on other workers whose local cache is empty: one writing the same output
tree as the first worker (its tree is rewritten: another ``cache.local``), one writing a tree of its own. Each row
gives the wall seconds and the megabytes that worker downloaded into its local cache.

    python benchmarks/s3_store.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port  # noqa: E402


def timed(env: dict, extra: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "quantize_sam2.py", "--config", "configs/demo.yaml", *extra], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - t, 1)


def downloaded_mb(local: Path) -> float:
    """Megabytes in a worker's sha256-keyed object cache (what it downloaded or built)."""
    return round(sum(p.stat().st_size for p in (local / "objects").glob("*") if p.is_file()) / 2**20, 1)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sam2ptq-s3-"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
           "PREFECT_HOME": str(tmp / "home"), "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        time.sleep(3)
        subprocess.run([sys.executable, "-c", "import s3fs; s3fs.S3FileSystem().mkdir('bench')"], env=env, check=True)
        out = {}
        local = ["--cache.root", str(tmp / "local"), "--output.root", str(tmp / "o1")]
        out["local: first, cached"] = [timed(env, local), timed(env, local)]
        s3 = ["--cache.root", "s3://bench/stages", "--output.root", str(tmp / "o2")]
        w1 = s3 + ["--cache.local", str(tmp / "w1")]
        out["s3: first, cached (same worker)"] = [timed(env, w1), timed(env, w1)]
        out["s3: cached on a second worker (empty local cache), same output tree"] = [
            timed(env, s3 + ["--cache.local", str(tmp / "w2")]), downloaded_mb(tmp / "w2")]
        own = ["--cache.root", "s3://bench/stages", "--output.root", str(tmp / "o3"), "--cache.local", str(tmp / "w3")]
        out["s3: cached on a third worker (empty local cache), its own output tree"] = [timed(env, own),
                                                                                       downloaded_mb(tmp / "w3")]
        from sam2ptq_core.export.runtime_choice import machine
        out["machine"] = machine()
        print(json.dumps(out, indent=1))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
