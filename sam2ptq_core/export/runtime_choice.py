"""Which graph runtime a run uses and where it measures, without importing torch or a runtime: the installed
runtimes, "auto" resolved, the runtime's version and this machine's CPU. The onnx_runtime stage keys its
measurement by these, and preflight checks them, on every run (cached ones included)."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

__all__ = ["RUNTIMES", "MissingRuntime", "NoVnni", "need", "available_runtimes", "pick_runtime", "check_exporter",
           "runtime_version", "machine", "int8_dot_products", "NO_VNNI"]

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


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA, its older name DNNL_MAX_CPU_ISA) that leave out every int8 dot-product level
_CAPS_WITHOUT_VNNI = {"SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS"}
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo's names

NO_VNNI = ("this CPU has no VNNI: OpenVINO's int8 kernels sum pairs of u8·s8 products in saturating 16-bit and "
           "would compute the quantized file wrongly")


class NoVnni(RuntimeError):
    """A quantized file refused on OpenVINO on a CPU without VNNI (``NO_VNNI``); the message names the fix."""


def int8_dot_products() -> bool:
    """Whether OpenVINO's int8 kernels on this CPU sum u8·s8 products in 32 bits: x86 with VNNI (AVX512-VNNI,
    AVX-VNNI) or AMX; CPUs other than x86 are not checked (True). Without it oneDNN falls back to vpmaddubsw, whose
    pair sums saturate at 32767 (255·127·2 = 64770 does not fit). Honours the ISA cap oneDNN reads
    (``ONEDNN_MAX_CPU_ISA``), so a capped process is told what its kernels will do."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap in _CAPS_WITHOUT_VNNI:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return True
    flags = _cpuinfo("flags")
    if flags is None:  # not Linux: numpy's own CPU detection (numpy 2; it has no AVX-VNNI entry)
        try:
            from numpy._core._multiarray_umath import __cpu_features__
        except ImportError:  # numpy 1: cannot tell, so nothing is refused
            return True
        return bool(__cpu_features__.get("AVX512VNNI") or __cpu_features__.get("AVXVNNI"))
    return any(f in flags.split() for f in _VNNI_FLAGS)


def pick_runtime(wanted: str) -> str:
    """``wanted`` if installed, or for "auto" the fastest installed that computes int8 files exactly here (ONNX
    Runtime, when installed, on an x86 CPU without VNNI: ``int8_dot_products``); one error line naming the extra
    otherwise."""
    have = available_runtimes()
    if wanted == "auto":
        if not have:
            raise MissingRuntime("no ONNX runtime is installed; install one: pip install -e '.[openvino]' or "
                                 "pip install -e '.[onnx]'")
        if not int8_dot_products() and "onnxruntime" in have:
            return "onnxruntime"
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


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...]:
    """/proc/cpuinfo's lines, read once per process (empty where there is none: not Linux)."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of ``keys``, or None."""
    return next((ln.split(":", 1)[1].strip() for ln in _cpuinfo_lines() if ln.startswith(keys)), None)


def machine() -> str:
    """This machine's CPU model and the CPUs this process may use, e.g. "AMD EPYC 7B13 (2 cpus)": latency and
    OpenVINO's "auto" float precision (bf16 where the CPU has it) depend on both."""
    name = _cpuinfo("model name", "Model", "Hardware") or ""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or platform.machine()} ({cpus} cpus)"
