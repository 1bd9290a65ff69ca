"""Wall time of the demo as a user sees it: the first run on a fresh machine, and fully cached reruns with Prefect's
temporary server and with a running Prefect server. Medians of /usr/bin/time over several runs, and where a cached
rerun's time goes: each stage's seconds (stages.json) and the CLI's slowest imports (``python -X importtime``).

    python benchmarks/startup.py [--runs 5] [--first]      # --first: also the first run (fresh cache + PREFECT_HOME)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port, wait_healthy  # noqa: E402

DEMO = [sys.executable, "quantize_sam2.py", "--config", "configs/demo.yaml"]


def timed(env: dict, extra: list[str]) -> float:
    r = subprocess.run(["/usr/bin/time", "-f", "%e", *DEMO, *extra], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"demo failed: {r.stderr[-2000:]}")
    return float(r.stderr.strip().splitlines()[-1])


def importtime(env: dict, extra: list[str], top: int = 8) -> dict[str, float]:
    """The slowest top-level imports of a cached rerun (seconds, cumulative, ``python -X importtime``)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *DEMO[1:], *extra], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    cum = {}
    for ln in r.stderr.splitlines():
        if ln.startswith("import time:") and "|" in ln:
            _, us, name = ln[len("import time:"):].split("|")
            if us.strip().isdigit() and not name[1:].startswith(" "):  # top level: one space after the bar
                cum[name.strip()] = cum.get(name.strip(), 0) + int(us) / 1e6
    return {k: round(v, 2) for k, v in sorted(cum.items(), key=lambda kv: -kv[1])[:top]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--first", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sam2ptq-startup-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {**base, "PREFECT_HOME": str(tmp / "home")}
    extra = ["--cache.root", str(tmp / "cache"), "--output.root", str(tmp / "out")]
    from sam2ptq_core.export.runtime_choice import machine
    out = {"machine": machine(), "runs": a.runs}
    if a.first:
        out["first_run_s"] = timed(env, extra)  # fresh PREFECT_HOME and an empty stage store
    else:
        timed(env, extra)  # fill the store
    out["cached_temporary_server_s"] = [timed(env, extra) for _ in range(a.runs)]
    stages = json.loads((tmp / "out" / "demo_tiny_w4a8" / "stages.json").read_text())
    out["cached_stage_s"] = {k: s["seconds"] for k, s in stages.items()}
    out["cached_slowest_imports_s"] = importtime(env, extra)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_healthy(api):
            raise SystemExit("the Prefect server did not start")
        out["cached_running_server_s"] = [timed({**env, "PREFECT_API_URL": api}, extra) for _ in range(a.runs)]
    finally:
        server.terminate()
        server.wait(30)
    for k in ("cached_temporary_server_s", "cached_running_server_s"):
        out[k[:-2] + "_median_s"] = statistics.median(out[k])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
