"""Shared test fixtures: the repository root and the reduced SAM2 test architecture (one source: reduced.yaml)."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REDUCED_CFG = ROOT / "tests" / "data" / "reduced.yaml"
ARCH = yaml.safe_load(REDUCED_CFG.read_text())["model"]["arch"]
