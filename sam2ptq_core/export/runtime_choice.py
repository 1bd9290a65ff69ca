"""Which graph runtime a run uses and where it measures, without importing torch or a runtime: the installed
runtimes, "auto" resolved, the runtime's version and this machine's CPU. The onnx_runtime stage keys its
measurement by these, and preflight checks them, on every run (cached ones included)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["RUNTIMES", "MissingRuntime", "need", "available_runtimes", "pick_runtime", "check_exporter",
           "runtime_version", "machine"]

RUNTIMES = ("openvino", "onnxruntime")
EXTRA = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}


class MissingRuntime(RuntimeError):
    """A runtime or the exporter's dependency is not installed; the message names the extra to install."""


def need(module: str):
    """``module`` imported, or ``MissingRuntime`` naming the extra that installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingRuntime(f"{module} is not installed; install the extra: pip install -e '.[{EXTRA[module]}]'"
                             ) from None


def available_runtimes() -> list[str]:
    """The runtimes importable here, fastest first (OpenVINO measured fastest on CPU, benchmarks/RESULTS.md)."""
    import importlib.util

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError, AttributeError):  # e.g. blocked in sys.modules
            return False
    return [r for r in RUNTIMES if importable(r)]


def pick_runtime(wanted: str) -> str:
    """``wanted`` if installed, or for "auto" the fastest installed; one error line naming the extra otherwise."""
    have = available_runtimes()
    if wanted == "auto":
        if not have:
            raise MissingRuntime("no ONNX runtime is installed; install one: pip install -e '.[openvino]' or "
                                 "pip install -e '.[onnx]'")
        return have[0]
    if wanted not in have:
        need(wanted)
    return wanted


def check_exporter(runtime: str) -> str:
    """The runtime ``pick_runtime`` gives, after checking that the exporter's packages are installed (found, not
    imported: importing onnxscript costs seconds on every run)."""
    import importlib.util
    for m in ("onnx", "onnxscript"):
        if importlib.util.find_spec(m) is None:
            need(m)  # the one error line
    return pick_runtime(runtime)


def runtime_version(runtime: str) -> str:
    """The installed version of ``runtime`` (part of what a latency or fidelity number was measured with)."""
    from importlib.metadata import version
    return version(runtime)


def machine() -> str:
    """This machine's CPU model and the CPUs this process may use, e.g. "AMD EPYC 7B13 (2 cpus)": latency and
    OpenVINO's "auto" float precision (bf16 where the CPU has it) depend on both."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or platform.machine()} ({cpus} cpus)"
