"""End to end against a real Prefect server and process worker: deploy, run, kill -9, retry.

Starts `prefect server start` on 127.0.0.1 with a temporary PREFECT_HOME, creates the work pool, deploys every
deployment of prefect.yaml, starts a worker, runs the `smoke` deployment with --watch, then starts a second run,
SIGKILLs its flow process during capture, `prefect flow-run retry`s it and checks that it resumed from the store to
artifacts identical to the first run's. Every process it starts is stopped by PID.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, wait_healthy

pytestmark = pytest.mark.slow
PY = sys.executable
TIMINGS: dict[str, float] = {}


def _prefect(env, *args, timeout=120, check=True):
    r = subprocess.run([PY, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return r


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _flow_pid(run_id: str) -> int | None:
    """The PID of the process running flow run ``run_id`` (its environment names the run)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    return int(d.name)
            except OSError:
                continue
    return None


def _state(env, run_id: str) -> str:
    out = _prefect(env, "flow-run", "inspect", run_id).stdout
    m = re.search(r"type=StateType\.(\w+)|'type': '(\w+)'|state_type=StateType\.(\w+)", out)
    return next(g for g in m.groups() if g) if m else "UNKNOWN"


def _digest(out: Path) -> dict:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest()
            for f in ["cache/model.pt", "cache/scale.pt", "cache/smooth.pt", "cache/branch.pt"]}


def test_deploy_run_kill_retry(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    procs = []
    t0 = time.time()
    try:
        server = subprocess.Popen([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, cwd=tmp_path, stdout=open(tmp_path / "server.log", "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(server)
        if not wait_healthy(f"http://127.0.0.1:{port}/api"):
            raise AssertionError("server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        TIMINGS["server_start_s"] = time.time() - t0
        t = time.time()
        _prefect(env, "work-pool", "create", "sam2-gpu", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all", timeout=180)
        ls = _prefect(env, "deployment", "ls").stdout
        assert "large-w4a8-svdquant-nightly" in ls and "tiny-w8a8-nightly" in ls and "smoke" in ls
        insp = _prefect(env, "deployment", "inspect", "sam2-ptq/large-w4a8-svdquant-nightly").stdout
        assert "0 2 * * *" in insp and "UTC" in insp
        TIMINGS["pool_and_deploy_s"] = time.time() - t
        worker = subprocess.Popen([PY, "-m", "prefect", "worker", "start", "--pool", "sam2-gpu", "--limit", "1"],
                                  env=env, cwd=tmp_path, stdout=open(tmp_path / "worker.log", "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(worker)

        out1 = tmp_path / "o1"
        bigger = ["quant.calib.image_size=256", "quant.calib.num_samples=6"]  # capture long enough to be caught
        ov1 = json.dumps([f"cache.root={tmp_path / 'c1'}", f"output.root={out1}", *bigger])
        t = time.time()
        r = _prefect(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ov1}", "--watch", timeout=240)
        TIMINGS["first_run_watch_s"] = time.time() - t
        tree1 = out1 / "reduced_w4a4"
        assert (tree1 / "metrics.json").is_file(), r.stdout[-2000:]

        out2, cache2 = tmp_path / "o2", tmp_path / "c2"
        ov2 = json.dumps([f"cache.root={cache2}", f"output.root={out2}", *bigger])
        r = _prefect(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ov2}")
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        stage = cache2 / "capture_activations"
        t = time.time()
        pid = None
        while time.time() - t < 180:
            if stage.is_dir() and any(".tmp-" in d.name for d in stage.iterdir()):
                pid = _flow_pid(run_id)
                if pid:
                    break
            time.sleep(0.01)
        assert pid, "never saw the flow run inside capture_activations"
        os.kill(pid, signal.SIGKILL)
        TIMINGS["killed_after_s"] = time.time() - t
        t = time.time()
        while time.time() - t < 60 and _state(env, run_id) not in ("CRASHED", "FAILED"):
            time.sleep(0.5)
        assert _state(env, run_id) in ("CRASHED", "FAILED")
        # the worker also reports the crash once it has reaped the process; a retry before that would be
        # overwritten by its report, so wait for it (as a person retrying a crashed run naturally does)
        t = time.time()
        while time.time() - t < 60 and f"Reported flow run '{run_id}' as crashed: Flow run infrastructure" \
                not in (tmp_path / "worker.log").read_text():
            time.sleep(0.5)
        assert not (out2 / "reduced_w4a4").exists()
        _prefect(env, "flow-run", "retry", run_id)
        t = time.time()
        while time.time() - t < 240 and _state(env, run_id) not in ("COMPLETED", "FAILED", "CRASHED"):
            time.sleep(0.5)
        TIMINGS["retry_to_completed_s"] = time.time() - t
        assert _state(env, run_id) == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        stages = json.loads((out2 / "reduced_w4a4" / "stages.json").read_text())
        assert stages["fetch_model"]["reused"] and stages["build_calibration_set"]["reused"]
        assert not stages["capture_activations"]["reused"]
        logs = _prefect(env, "flow-run", "logs", run_id).stdout
        assert "reused fetch_model" in logs and "reused build_calibration_set" in logs
        # the killed-and-retried run equals the uninterrupted first run (same config, another store)
        assert _digest(out2 / "reduced_w4a4") == _digest(tree1)
    finally:
        for p in reversed(procs):
            _stop(p)
        TIMINGS["total_s"] = time.time() - t0
        print("deployment e2e timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
    assert all(p.poll() is not None for p in procs)
