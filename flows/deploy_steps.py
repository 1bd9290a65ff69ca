"""Prefect pull step for the deployments in prefect.yaml: run each flow from the sam2ptq checkout on the worker."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["checkout_directory"]


def checkout_directory(directory: str = "") -> dict[str, str]:
    """Change into the checkout the flow runs from: ``SAM2PTQ_HOME`` in the worker's environment, else ``directory``
    (``{{ $SAM2PTQ_HOME }}`` when ``prefect deploy`` ran with it set), else the checkout this package is installed
    from on the worker (an editable install of the repository, as scripts/setup.sh makes)."""
    home = os.environ.get("SAM2PTQ_HOME") or directory or str(Path(__file__).resolve().parents[1])
    if not (Path(home) / "flows" / "ptq.py").is_file():
        raise FileNotFoundError(f"{home} is not a sam2ptq checkout (no flows/ptq.py); set SAM2PTQ_HOME on the worker "
                                f"to the checkout's path")
    os.chdir(home)
    return {"directory": os.getcwd()}
