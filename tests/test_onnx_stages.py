"""The ONNX stages' keys (issue 28, item 4): the file (onnx_export) is keyed by the recipe only; where it ran
(onnx_runtime) by the onnx settings, the runtime ``auto`` resolves to, its version and the machine; evaluate's
fake-quant evaluation depends on none of those."""
import json
import sys
from pathlib import Path

import pytest

from sam2ptq_core.config import load_config
from sam2ptq_core.export import runtime_choice
from sam2ptq_core.pipeline import onnx_export as ox
from sam2ptq_core.pipeline.stages import STAGES
from tests.helpers import REDUCED_CFG

RUNTIME_SETTINGS = (["onnx={runtime: onnxruntime, latency_runs: 1}"],
                    ["onnx={runtime: openvino, latency_runs: 9, precision: f32}"],
                    ["onnx={runtime: auto}"])


def _upstream_closure(name: str) -> set[str]:
    todo, seen = [name], set()
    while todo:
        for u in STAGES[todo.pop()].upstream:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


def test_runtime_settings_change_neither_the_file_nor_the_evaluation():
    """Every stage evaluate reads, and the file's stage, has the same config slice whatever onnx.runtime,
    onnx.precision and onnx.latency_runs say; onnx_runtime's slice is what changes."""
    cfgs = [load_config(REDUCED_CFG, ovs) for ovs in RUNTIME_SETTINGS]
    for stage in {"onnx_export", "evaluate"} | _upstream_closure("evaluate"):
        slices = [json.dumps(STAGES[stage].config_slice(c), sort_keys=True) for c in cfgs]
        assert len(set(slices)) == 1, (stage, slices)
    assert "onnx_runtime" not in _upstream_closure("evaluate")
    assert len({json.dumps(STAGES["onnx_runtime"].config_slice(c), sort_keys=True) for c in cfgs}) == 3


def test_runtime_key_resolves_auto_and_names_version_and_machine(monkeypatch):
    c = load_config(REDUCED_CFG, ["onnx={runtime: auto}"])
    monkeypatch.setattr(runtime_choice, "available_runtimes", lambda: ["openvino", "onnxruntime"])
    monkeypatch.setattr(ox, "runtime_version", lambda rt: {"openvino": "2026.4.1", "onnxruntime": "1.32.0"}[rt])
    monkeypatch.setattr(ox, "machine", lambda: "CPU A (2 cpus)")
    monkeypatch.setattr(runtime_choice, "int8_dot_products", lambda: False)  # a CPU without VNNI: ONNX Runtime
    assert ox.runtime_key(c)["runtime_resolved"] == "onnxruntime"
    monkeypatch.setattr(runtime_choice, "int8_dot_products", lambda: True)
    with_ov = ox.runtime_key(c)
    assert with_ov == {"runtime_resolved": "openvino", "runtime_version": "2026.4.1", "machine": "CPU A (2 cpus)"}
    monkeypatch.setattr(runtime_choice, "available_runtimes", lambda: ["onnxruntime"])  # a worker without OpenVINO
    assert ox.runtime_key(c)["runtime_resolved"] == "onnxruntime"
    assert ox.runtime_key(c)["runtime_version"] == "1.32.0"
    monkeypatch.setattr(ox, "machine", lambda: "CPU B (16 cpus)")
    assert ox.runtime_key(c)["machine"] == "CPU B (16 cpus)"


def test_machine_names_the_cpu_and_its_count():
    m = runtime_choice.machine()
    assert m.endswith(" cpus)") and m[0] != "(", m


def _stages(out: Path) -> dict:
    return json.loads((out / "stages.json").read_text())


@pytest.mark.slow
def test_runtime_changes_re_measure_without_re_evaluating(prefect_server, tmp_path, monkeypatch):
    """Reduced config with ``onnx``: changing latency_runs/precision re-measures only (the file and the fake-quant
    evaluation reused); another runtime version or machine re-measures; a worker without OpenVINO that must
    evaluate again (other held-out count) measures on ONNX Runtime instead of failing with MissingRuntime."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    if not runtime_choice.int8_dot_products():
        pytest.skip("auto resolves to ONNX Runtime on a CPU without VNNI (tests/test_runtime_vnni.py)")
    from flows.ptq import sam2_ptq
    base = [f"cache.root={tmp_path / 'c'}", f"output.root={tmp_path / 'o'}"]
    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, "onnx={latency_runs: 1}"]))
    info = json.loads((out / "onnx" / "onnx.json").read_text())
    assert info["runtime"] == "openvino" and info["latency_runs"] == 1 and info["machine"]
    assert info["runtime_version"] and info["precision_setting"] == "auto"
    first = _stages(out)

    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, "onnx={latency_runs: 2, precision: f32}"]))
    st = _stages(out)
    assert st["onnx_export"]["reused"] and st["evaluate"]["reused"] and not st["onnx_runtime"]["reused"]
    assert st["onnx_export"]["key"] == first["onnx_export"]["key"]
    info = json.loads((out / "onnx" / "onnx.json").read_text())
    assert info["latency_runs"] == 2 and info["precision_setting"] == "f32"
    assert json.loads((out / "metrics.json").read_text())["runtime"]["precision"] == "f32"
    assert "## Real kernels (the ONNX encoder in onnx/)" in (out / "report.md").read_text()

    monkeypatch.setattr(ox, "runtime_version", lambda rt: "0.0.1-other")
    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, "onnx={latency_runs: 2, precision: f32}"]))
    st = _stages(out)
    assert st["evaluate"]["reused"] and not st["onnx_runtime"]["reused"]
    monkeypatch.undo()
    monkeypatch.setattr(ox, "machine", lambda: "another CPU (64 cpus)")
    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, "onnx={latency_runs: 2, precision: f32}"]))
    assert not _stages(out)["onnx_runtime"]["reused"]
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "openvino", None)  # this worker has no OpenVINO
    out = Path(sam2_ptq(str(REDUCED_CFG), [*base, "onnx={latency_runs: 1}", "quant.eval.num_samples=1"]))
    st = _stages(out)
    assert st["onnx_export"]["reused"] and not st["evaluate"]["reused"] and not st["onnx_runtime"]["reused"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["runtime"]["runtime"] == "onnxruntime" and 0 < m["runtime"]["masks"]["miou_vs_fp"] <= 1
    assert json.loads((out / "onnx" / "onnx.json").read_text())["runtime"] == "onnxruntime"
