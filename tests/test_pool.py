"""Many workers, one bucket: a real Prefect server, an S3 server (moto, loopback) and two process workers, each with
its own working directory and local cache, sharing ``cache.root: s3://…``.

1. A run on worker 1 completes uninterrupted (the reference) and records the regression baseline in the bucket.
2. A second run (another prefix) is killed with ``kill -9`` during capture on worker 1; worker 1 is stopped; the run
   is retried and completes on worker 2, reusing the stages worker 1 finished (from the bucket) and waiting for the
   killed run's capture lease to run out; its artifacts equal the reference's byte for byte.
3. Worker 2 runs the reference's config: every stage comes from the bucket and the regression guard compares with
   the baseline worker 1 recorded.
4. A sweep of 2 models × 2 configs runs on both workers (parent on a control pool): capture is built once per model
   (one manifest each, one run logging its progress), and the comparison artifact exists.
"""
import json
import os
import re
import signal
import time

import pytest
import yaml
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tests.helpers import (
    REDUCED_CFG,
    deploy_all,
    digest_tree,
    flow_pid,
    free_port,
    prefect_cli,
    prefect_env,
    run_state,
    start_server,
    start_worker,
    stop_group,
)

pytestmark = pytest.mark.slow
BUCKET = "sam2ptq-test"
TIMINGS: dict[str, float] = {}


def _wait_state(env, run_id: str, states: tuple[str, ...], seconds: float) -> str:
    t = time.time()
    while time.time() - t < seconds:
        s = run_state(env, run_id)
        if s in states:
            return s
        time.sleep(1)
    return run_state(env, run_id)


def _client_call(api_url: str, fn):
    """Call ``fn(client)`` with a Prefect client of the loopback server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return fn(client)


def _logs(client, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    out, offset = [], 0
    while True:  # the API returns at most 200 per call
        page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200,
                                offset=offset)
        out += [x.message for x in page]
        offset += len(page)
        if len(page) < 200:
            return "\n".join(out)


def _s3(env):
    import s3fs
    return s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="test", secret="test")


def test_two_workers_one_bucket(s3_server, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path, port, **{k: v for k, v in s3_server.items() if k.startswith("AWS_")},
                      PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2", PREFECT_WORKER_QUERY_SECONDS="2")

    def wenv(name):  # each worker: its own working directory and local read-through cache
        return {**env, "XDG_CACHE_HOME": str(tmp_path / name / "xdg")}
    procs, t0 = {}, time.time()
    try:
        procs["server"] = start_server(env, port, tmp_path / "server.log")
        deploy_all(env)  # both pools (sam2-gpu, sam2-control) and every deployment
        procs["w1"] = start_worker(wenv("w1"), "sam2-gpu", tmp_path / "w1", tmp_path / "w1.log")
        TIMINGS["setup_s"] = time.time() - t0

        # 1. the reference run, on worker 1
        bigger = ["quant.calib.image_size=256", "quant.calib.num_samples=6"]  # a capture long enough to be caught
        ref = json.dumps([f"cache.root=s3://{BUCKET}/ref", f"output.root={tmp_path / 'o-ref'}", *bigger])
        t = time.time()
        r = prefect_cli(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ref}", "--watch", timeout=300)
        ref_run = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        TIMINGS["reference_run_s"] = time.time() - t
        tree_ref = tmp_path / "o-ref" / "reduced_w4a4"
        assert (tree_ref / "metrics.json").is_file(), r.stdout[-2000:]

        # 2. killed during capture on worker 1, retried on worker 2
        ov = json.dumps([f"cache.root=s3://{BUCKET}/main", f"output.root={tmp_path / 'o-main'}", *bigger])
        r = prefect_cli(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ov}")
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        staging = tmp_path / "w1" / "xdg" / "sam2ptq" / "staging"
        t, pid = time.time(), None
        while time.time() - t < 240 and pid is None:
            if staging.is_dir() and any(d.name.startswith("capture_activations-") for d in staging.iterdir()):
                pid = flow_pid(run_id)
            time.sleep(0.01)
        assert pid, "never saw the flow run inside capture_activations on worker 1"
        os.kill(pid, signal.SIGKILL)
        assert _wait_state(env, run_id, ("CRASHED", "FAILED"), 90) in ("CRASHED", "FAILED")
        t = time.time()  # let worker 1 report the crash before it goes (a later report would undo the retry)
        while time.time() - t < 60 and "as crashed" not in (tmp_path / "w1.log").read_text():
            time.sleep(0.5)
        stop_group(procs.pop("w1"))
        s3 = _s3(env)
        assert not s3.exists(f"{BUCKET}/main/capture_activations")  # nothing of the killed capture is visible
        procs["w2"] = start_worker(wenv("w2"), "sam2-gpu", tmp_path / "w2", tmp_path / "w2.log")
        prefect_cli(env, "flow-run", "retry", run_id)
        t = time.time()
        state = _wait_state(env, run_id, ("COMPLETED", "FAILED", "CRASHED"), 300)
        TIMINGS["retry_to_completed_s"] = time.time() - t
        assert state == "COMPLETED", (tmp_path / "w2.log").read_text()[-3000:]
        logs = _client_call(api, lambda c: _logs(c, run_id))
        assert "reused fetch_model" in logs and "reused build_calibration_set" in logs  # built by worker 1
        assert "waiting for its lease" in logs  # the killed holder's lease held worker 2 until it ran out
        stages = json.loads((tmp_path / "o-main" / "reduced_w4a4" / "stages.json").read_text())
        assert not stages["capture_activations"]["reused"]
        assert digest_tree(tmp_path / "o-main" / "reduced_w4a4") == digest_tree(tree_ref)

        # 3. worker 2 runs the reference's config: all from the bucket, compared with worker 1's baseline
        ref2 = json.dumps([f"cache.root=s3://{BUCKET}/ref", f"output.root={tmp_path / 'o-ref2'}", *bigger])
        r = prefect_cli(env, "deployment", "run", "sam2-ptq/smoke", "-p", f"overrides={ref2}", "--watch", timeout=300)
        run3 = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        logs = _client_call(api, lambda c: _logs(c, run3))
        assert f"at run {ref_run}" in logs, logs[-3000:]  # the regression guard's baseline is worker 1's run
        stages = json.loads((tmp_path / "o-ref2" / "reduced_w4a4" / "stages.json").read_text())
        assert all(s["reused"] for k, s in stages.items() if k != "export")

        # 4. a sweep of 2 models × 2 configs on both workers
        cfg = yaml.safe_load(REDUCED_CFG.read_text())
        cfg["quant"].update(wgts={"dtype": "sint8", "group_shapes": [[1, -1]], "low_rank": {"rank": 0}}, rotation=None,
                            ipts={"dtype": "sint8", "group_shapes": [[1, -1]]})
        w8 = tmp_path / "reduced_w8a8.yaml"
        w8.write_text(yaml.safe_dump(cfg))
        procs["w1"] = start_worker(wenv("w1"), "sam2-gpu", tmp_path / "w1", tmp_path / "w1.log")
        procs["control"] = start_worker(env, "sam2-control", tmp_path / "control", tmp_path / "control.log")
        sweep_ovs = [f"cache.root=s3://{BUCKET}/sweep", f"output.root={tmp_path / 'os'}"]
        params = ["-p", 'models=["tiny", "small"]', "-p", f"configs={json.dumps([str(REDUCED_CFG), str(w8)])}",
                  "-p", f"overrides={json.dumps(sweep_ovs)}", "-p", f"output_root={tmp_path / 'sweeps'}",
                  "-p", "poll_seconds=1"]
        t = time.time()
        r = prefect_cli(env, "deployment", "run", "sam2-ptq-sweep/sweep", *params, "--watch", timeout=600)
        TIMINGS["sweep_s"] = time.time() - t
        sweep_run = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        assert run_state(env, sweep_run) == "COMPLETED", (tmp_path / "control.log").read_text()[-3000:]
        manifests = s3.glob(f"{BUCKET}/sweep/capture_activations/*/manifest.json")
        assert len(manifests) == 2  # one capture per model

        def children(c):
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[sweep_run])))
            return {r.name: (r.state.type.value, "capture_activations: " in _logs(c, r.id)) for r in runs}
        kids = _client_call(api, children)
        assert len(kids) == 4 and all(s == "COMPLETED" for s, _ in kids.values()), kids
        assert sum(captured for _, captured in kids.values()) == 2, kids  # only one job per model captured
        table = _client_call(api, lambda c: c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sam2-ptq-sweep"]))))
        assert table and table[-1].data.startswith("RANDOM WEIGHTS")
        comp = json.loads(next((tmp_path / "sweeps").glob("*/comparison.json")).read_text())
        assert sorted(r["job"] for r in comp) == ["hiera_small_reduced", "hiera_small_reduced_w8a8",
                                                  "hiera_tiny_reduced", "hiera_tiny_reduced_w8a8"]
        w8_size = next(r["size_mib"] for r in comp if r["job"] == "hiera_tiny_reduced_w8a8")
        w4_size = next(r["size_mib"] for r in comp if r["job"] == "hiera_tiny_reduced")
        assert w8_size > w4_size  # 8-bit codes take more room than 4-bit codes + a rank-8 branch
    finally:
        for p in reversed(list(procs.values())):
            stop_group(p)
        TIMINGS["total_s"] = time.time() - t0
        print("pool e2e timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
