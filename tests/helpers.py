"""Shared test fixtures: the repository root, the reduced SAM2 test architecture (one source: reduced.yaml), and
helpers for starting a real Prefect server (also used by benchmarks/startup.py)."""
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REDUCED_CFG = ROOT / "tests" / "data" / "reduced.yaml"
ARCH = yaml.safe_load(REDUCED_CFG.read_text())["model"]["arch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(api_url: str, seconds: float = 120) -> bool:
    """Poll ``<api_url>/health`` until the Prefect server answers; False if it never does."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            urllib.request.urlopen(f"{api_url}/health", timeout=1)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def wait_listening(port: int, seconds: float = 30) -> bool:
    """Poll until something accepts TCP connections on 127.0.0.1:``port``; False if nothing does in time."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


PY = sys.executable


def prefect_cli(env, *args, timeout=120, check=True):
    r = subprocess.run([PY, "-m", "prefect", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
    return r


def stop_group(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def flow_pid(run_id: str) -> int | None:
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


def run_state(env, run_id: str) -> str:
    out = prefect_cli(env, "flow-run", "inspect", run_id).stdout
    m = re.search(r"type=StateType\.(\w+)|'type': '(\w+)'|state_type=StateType\.(\w+)", out)
    return next(g for g in m.groups() if g) if m else "UNKNOWN"


def digest_tree(out: Path) -> dict:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest()
            for f in ["cache/model.pt", "cache/scale.pt", "cache/smooth.pt", "cache/branch.pt"]}


def prefect_env(tmp: Path, port: int, **extra: str) -> dict:
    """The environment of a loopback Prefect server at ``port`` and of the processes that talk to it."""
    return {**os.environ, "PREFECT_HOME": str(tmp / "home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1",
            "COLUMNS": "300", **extra}


def start_server(env: dict, port: int, log: Path) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:``port`` in its own process group, once it answers /health."""
    p = subprocess.Popen([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         env=env, cwd=log.parent, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    if not wait_healthy(f"http://127.0.0.1:{port}/api"):
        stop_group(p)
        raise AssertionError("server did not start: " + log.read_text()[-2000:])
    return p


def start_worker(env: dict, pool: str, cwd: Path, log: Path) -> subprocess.Popen:
    """A process worker of ``pool`` taking one run at a time, in its own process group."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([PY, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1"], env=env,
                            cwd=cwd, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def deploy_all(env: dict) -> None:
    """Create every work pool prefect.yaml's deployments name (process pools), then ``prefect deploy --all``."""
    pools = sorted({d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]})
    for pool in pools:
        prefect_cli(env, "work-pool", "create", pool, "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--all", timeout=180)


def wait_with_progress(done, signal_of, stall_seconds: float = 180, poll: float = 0.5) -> bool:
    """Poll ``done()`` until it is true; give up only when ``signal_of()`` (anything comparable: a log's size, the
    stage folders present, the run state) has not changed for ``stall_seconds``. A slow machine that keeps making
    progress never fails a test; a hung one fails after the stall. Returns ``done()``."""
    last, since = signal_of(), time.time()
    while not done():
        time.sleep(poll)
        now = signal_of()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since > stall_seconds:
            return bool(done())
    return True


def run_progress(env, run_id: str, *paths: Path):
    """A progress signal for a flow run: its state and the sizes and entries of ``paths`` (worker log, cache root)."""
    def signal_of():
        sizes = []
        for p in paths:
            if p.is_file():
                sizes.append(p.stat().st_size)
            elif p.is_dir():
                sizes.append(sum(1 for _ in p.rglob("*")))
        return run_state(env, run_id), tuple(sizes)
    return signal_of


def scheme_of(spec):
    """The LayerScheme whose formats a test's LayerSpec carries (not rotated, no fallback)."""
    from sam2ptq_core.algorithms.scheme import LayerScheme
    return LayerScheme(spec.w_dtype, spec.w_group, spec.a_dtype, spec.a_group, spec.a_shift, rank=spec.rank)


def skip_without_int8_dot_products() -> None:
    """Skip a test that compiles int8 files on OpenVINO itself (bypassing ``open_runtime``'s refusal) on an x86 CPU
    without VNNI, where those kernels saturate (tests/test_runtime_vnni.py)."""
    import pytest

    from sam2ptq_core.export.runtime_choice import NO_VNNI, int8_dot_products
    if not int8_dot_products():
        pytest.skip(f"OpenVINO int8 on this CPU: {NO_VNNI}")
