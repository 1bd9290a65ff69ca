"""End to end against a real Prefect server and process worker: deploy, run, kill -9, retry.

Starts `prefect server start` on 127.0.0.1 with a temporary PREFECT_HOME, creates the work pool, deploys every
deployment of prefect.yaml, starts a worker, runs the `smoke` deployment with --watch, then starts a second run,
SIGKILLs its flow process during capture, `prefect flow-run retry`s it and checks that it resumed from the store to
artifacts identical to the first run's. Every process it starts is stopped by PID.
"""
import json
import os
import re
import signal
import time

import pytest

from tests.helpers import (
    deploy_all,
    digest_tree,
    flow_pid,
    free_port,
    prefect_cli,
    prefect_env,
    run_progress,
    run_state,
    start_server,
    start_worker,
    stop_group,
    wait_with_progress,
)

pytestmark = pytest.mark.slow
TIMINGS: dict[str, float] = {}


def test_deploy_run_kill_retry(tmp_path):
    port = free_port()
    env = prefect_env(tmp_path, port)
    procs = []
    t0 = time.time()
    try:
        procs.append(start_server(env, port, tmp_path / "server.log"))
        TIMINGS["server_start_s"] = time.time() - t0
        t = time.time()
        deploy_all(env)  # both pools (sam2-gpu, sam2-control) and every deployment
        ls = prefect_cli(env, "deployment", "ls").stdout
        assert "large-w4a8-svdquant-nightly" in ls and "tiny-w8a8-nightly" in ls and "smoke" in ls
        insp = prefect_cli(env, "deployment", "inspect", "sam2-ptq/large-w4a8-svdquant-nightly").stdout
        assert "0 2 * * *" in insp and "UTC" in insp
        TIMINGS["pool_and_deploy_s"] = time.time() - t
        worker = start_worker(env, "sam2-gpu", tmp_path, tmp_path / "worker.log")
        procs.append(worker)

        out1 = tmp_path / "o1"
        bigger = ["quant.calib.image_size=256", "quant.calib.num_samples=6"]  # capture long enough to be caught
        ov1 = json.dumps([f"cache.root={tmp_path / 'c1'}", f"output.root={out1}", *bigger])
        t = time.time()
        r = prefect_cli(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ov1}")
        first = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        # waits as long as the run makes progress (state, worker log, stage folders), never on a wall-clock guess
        wait_with_progress(lambda: run_state(env, first) in ("COMPLETED", "FAILED", "CRASHED"),
                           run_progress(env, first, tmp_path / "worker.log", tmp_path / "c1"))
        TIMINGS["first_run_watch_s"] = time.time() - t
        tree1 = out1 / "reduced_w4a4"
        assert (tree1 / "metrics.json").is_file(), (tmp_path / "worker.log").read_text()[-3000:]

        out2, cache2 = tmp_path / "o2", tmp_path / "c2"
        ov2 = json.dumps([f"cache.root={cache2}", f"output.root={out2}", *bigger])
        r = prefect_cli(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ov2}")
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        stage = cache2 / "capture_activations"
        t = time.time()
        pid = None
        while time.time() - t < 180:
            if stage.is_dir() and any(".tmp-" in d.name for d in stage.iterdir()):
                pid = flow_pid(run_id)
                if pid:
                    break
            time.sleep(0.01)
        assert pid, "never saw the flow run inside capture_activations"
        os.kill(pid, signal.SIGKILL)
        TIMINGS["killed_after_s"] = time.time() - t
        t = time.time()
        while time.time() - t < 60 and run_state(env, run_id) not in ("CRASHED", "FAILED"):
            time.sleep(0.5)
        assert run_state(env, run_id) in ("CRASHED", "FAILED")
        # the worker also reports the crash once it has reaped the process; a retry before that would be
        # overwritten by its report, so wait for it (as a person retrying a crashed run naturally does)
        t = time.time()
        while time.time() - t < 60 and f"Reported flow run '{run_id}' as crashed: Flow run infrastructure" \
                not in (tmp_path / "worker.log").read_text():
            time.sleep(0.5)
        assert not (out2 / "reduced_w4a4").exists()
        prefect_cli(env, "flow-run", "retry", run_id)
        t = time.time()
        wait_with_progress(lambda: run_state(env, run_id) in ("COMPLETED", "FAILED", "CRASHED"),
                           run_progress(env, run_id, tmp_path / "worker.log", cache2))
        TIMINGS["retry_to_completed_s"] = time.time() - t
        assert run_state(env, run_id) == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        stages = json.loads((out2 / "reduced_w4a4" / "stages.json").read_text())
        assert stages["fetch_model"]["reused"] and stages["build_calibration_set"]["reused"]
        assert not stages["capture_activations"]["reused"]
        logs = prefect_cli(env, "flow-run", "logs", run_id).stdout
        assert "reused fetch_model" in logs and "reused build_calibration_set" in logs
        # the killed-and-retried run equals the uninterrupted first run (same config, another store)
        assert digest_tree(out2 / "reduced_w4a4") == digest_tree(tree1)
    finally:
        for p in reversed(procs):
            stop_group(p)
        TIMINGS["total_s"] = time.time() - t0
        print("deployment e2e timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
    assert all(p.poll() is not None for p in procs)


def test_every_deployment_validates_with_its_own_defaults():
    """Each deployment of prefect.yaml, with the parameters it ships (the sweep used to default to 'base_plus', which
    every run refused): its config and overrides load, and the sweep's job plan is made (model names included).
    Folders like /data/coco are the user's to edit and are not checked here."""
    import yaml

    from sam2ptq_core.config import load_config
    from sam2ptq_core.pipeline.sweep import plan_jobs
    from tests.helpers import ROOT
    deps = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    seen = set()
    for d in deps:
        p = d.get("parameters", {})
        if d["entrypoint"].endswith("sam2_ptq_sweep"):
            jobs = plan_jobs(p["models"], p["configs"], p["overrides"])
            assert len(jobs) == len(p["models"]) * len(p["configs"]), d["name"]
        else:
            load_config(str(ROOT / p["config"]), p.get("overrides", []))
        seen.add(d["name"])
    assert {"sweep", "sweep-job", "demo", "smoke"} <= seen
