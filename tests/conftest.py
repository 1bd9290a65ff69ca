import os
import subprocess
import sys

import pytest
from hypothesis import settings

from tests.helpers import free_port, wait_listening

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server for the session (Prefect's own test harness, temporary database)."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def onnx_tree(prefect_server, tmp_path_factory):
    """One output tree of the reduced W4A4 config with ``onnx`` (ONNX Runtime, one latency run), built once for the
    session: the drop-in pair's tests and the video path's read it, none writes to it."""
    from pathlib import Path

    from flows.ptq import sam2_ptq
    from tests.helpers import REDUCED_CFG
    pytest.importorskip("onnxruntime", reason="the '.[onnx]' extra (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("pair_tree")
    ovs = [f"cache.root={d / 'c'}", f"output.root={d / 'o'}", "onnx={runtime: onnxruntime, latency_runs: 1}"]
    return Path(sam2_ptq(str(REDUCED_CFG), ovs))


@pytest.fixture
def s3_server(tmp_path):
    """moto's standalone S3 server on loopback, as s3fs's own test suite runs it."""
    pytest.importorskip("s3fs")
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_listening(port, 30), (tmp_path / "moto.log").read_text()[-2000:]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
        subprocess.run([sys.executable, "-c", "import s3fs; s3fs.S3FileSystem().mkdir('sam2ptq-test')"], env=env,
                       check=True, timeout=60)
        yield env
    finally:
        p.terminate()
        p.wait(10)


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """On an x86 CPU without VNNI, sam2ptq refuses to run quantized files on OpenVINO (``runtime_choice.NO_VNNI``:
    its int8 kernels saturate there); a test that needs them is skipped with that reason, not failed. The refusal
    itself is tested on every machine (tests/test_runtime_vnni.py, under oneDNN's AVX2 cap)."""
    outcome = yield
    err = outcome.excinfo[1] if outcome.excinfo else None
    from sam2ptq_core.export.runtime_choice import NO_VNNI, int8_dot_products
    if err is not None and NO_VNNI in str(err):
        if not int8_dot_products() and "ONEDNN_MAX_CPU_ISA" not in os.environ:
            outcome.force_exception(pytest.skip.Exception(f"OpenVINO int8 on this CPU: {err}"))
