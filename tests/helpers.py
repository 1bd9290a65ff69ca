"""Shared test fixtures: the repository root, the reduced SAM2 test architecture (one source: reduced.yaml), and
helpers for starting a real Prefect server (also used by benchmarks/startup.py)."""
import socket
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
