"""The ONNX export against its consumer: ONNX Runtime running each exported layer kind computes what QuantLinear
computes with the same formats (int8 QDQ weights from our codes, static per-tensor 8-bit activations), and the
exported encoder runs on ONNX Runtime and OpenVINO."""
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the '.[onnx]' extra (scripts/setup.sh installs it)")

from sam2ptq_core.algorithms.layer_recipe import GELU_SHIFT, LayerSpec, shifted_spec  # noqa: E402
from sam2ptq_core.algorithms.model_recipe import quantize_all, saved_layers  # noqa: E402
from sam2ptq_core.algorithms.quantizers import range_qparams  # noqa: E402
from sam2ptq_core.algorithms.rotation import Rotation  # noqa: E402
from sam2ptq_core.algorithms.statistics import StatsAccumulator  # noqa: E402
from sam2ptq_core.export.onnx import OPSET, RuntimeLinear, _to_qdq, open_runtime  # noqa: E402
from sam2ptq_core.sam2.quantized_model import QuantLinear, artifacts_from_saved  # noqa: E402
from tests.helpers import scheme_of  # noqa: E402

W4 = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=0, gptq=False, scale_dtype="float16")
W4B = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=8, lowrank_iters=2, gptq=False,
                scale_dtype="float16")
U4 = LayerSpec(w_dtype="uint4", w_group=64, a_dtype="uint8", a_group=-1, rank=0, gptq=True, block_size=32)
W8 = LayerSpec(w_dtype="sint8", w_group=-1, a_dtype="sint8", a_group=-1, rank=0, gptq=True, block_size=32)
# kind: (spec, smoothed, rotated)
KINDS = {"plain": (W8, False, False), "smoothed": (W8, True, False), "branch": (W4B, True, False),
         "shifted": (shifted_spec(W4B), True, False), "fallback": (W8, True, True), "rotated": (W4, False, True),
         "grouped_unsigned": (U4, True, False)}


class _One(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _layers():
    """Each kind quantized by the pipeline's own per-layer code on GELU-like inputs with outlier channels
    (96 inputs: the 4-bit groups of 64 end with a ragged one)."""
    g = torch.Generator().manual_seed(0)
    n_in, n_out, tokens = 96, 80, 512
    lin, x, stats, smooth, rots = {}, {}, {}, {}, {}
    for i, (k, (spec, smoothed, rotated)) in enumerate(KINDS.items()):
        m = torch.nn.Linear(n_in, n_out).requires_grad_(False)
        torch.nn.init.normal_(m.weight, std=0.1, generator=g)
        xi = torch.randn(tokens, n_in, generator=g) * (1 + 6 * (torch.rand(n_in, generator=g) > 0.9))
        if spec.a_shift:
            xi = torch.nn.functional.gelu(xi)
        acc = StatsAccumulator(n_in, tokens, seed=i)
        acc.add(xi)
        lin[k], x[k], stats[k] = m, xi, acc.result()
        if smoothed:
            smooth[k] = (xi.abs().amax(0) / m.weight.abs().amax(0)).clamp_min(1e-2).sqrt()
        rots[k] = Rotation(n_in, random=True, seed=3) if rotated else None
    specs = {k: v[0] for k, v in KINDS.items()}
    lqs = quantize_all(lin, stats, smooth, rots, specs)
    saved = saved_layers(lqs, lin, specs, smooth)
    schemes = {k: scheme_of(s) for k, s in specs.items()}
    return x, saved, schemes, smooth, {"random": True, "seed": 3, "layers": [k for k in KINDS if KINDS[k][2]]}


def test_onnxruntime_runs_each_layer_kind_as_quantlinear(tmp_path):
    """Measured relative output error (ORT vs QuantLinear at the static 8-bit scheme, float32 both): 1.6e-7 – 1.8e-7
    on the kinds with 8-bit weights (ORT's integer kernels; the activation codes round alike, what is left is float
    summation order), 0 on the 4-bit ones (ORT dequantizes them to float); tolerance 2e-6. The same layers with the
    pipeline's dynamic per-token / per-group activations differ from ORT by 0.012 – 0.10: the per-tensor format,
    not the kernel."""
    import onnx
    x, saved, schemes, smooth, rotation = _layers()
    arts = artifacts_from_saved(saved, smooth, rotation, schemes)
    errs = {}
    for k, art in arts.items():
        dyn = QuantLinear(art)
        sch = schemes[k].static8()
        xt = x[k] + sch.shift
        if dyn.rotation is not None:
            xt = dyn.rotation.apply(xt)
        xt = xt / smooth[k] if k in smooth else xt
        art.scheme, art.act_qparams = sch, range_qparams(float(xt.min()), float(xt.max()), sch.a_dtype)
        ql = QuantLinear(art)
        prog = torch.onnx.export(_One(RuntimeLinear(ql)).eval(), (x[k],), dynamo=True, opset_version=OPSET,
                                 input_names=["pixel_values"], verbose=False)
        proto = prog.model_proto
        assert _to_qdq(proto.graph, {"layer": saved[k]}, {"layer": sch}, {"layer": ql.act_qparams}, "") == 1
        path = tmp_path / f"{k}.onnx"
        onnx.save_model(proto, str(path))
        ops = {n.op_type for n in proto.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= ops, (k, ops)
        got = torch.from_numpy(open_runtime(path, "onnxruntime")(x[k].numpy())[0])
        with torch.no_grad():
            want, dyn_y = ql(x[k]), dyn(x[k])
        errs[k] = float((got - want).norm() / want.norm())
        assert errs[k] < 2e-6, (k, errs[k])
        assert float((got - dyn_y).norm() / dyn_y.norm()) > 10 * errs[k]  # the static format is what differs
    assert schemes["shifted"].a_dtype == "uint4" and schemes["shifted"].static8().a_dtype == "uint8"
    assert schemes["shifted"].shift == GELU_SHIFT


def test_missing_runtime_is_one_line(monkeypatch):
    import sys

    from sam2ptq_core.export.onnx import MissingRuntime, pick_runtime
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(MissingRuntime, match=r"openvino is not installed; install the extra: pip install -e "):
        pick_runtime("openvino")


@pytest.mark.slow
def test_flow_exports_and_runs_the_onnx_encoder(prefect_server, tmp_path):
    """The reduced W4A4 config with ``onnx``: the stage writes onnx/encoder.onnx, scores it against float and its
    static twin, times it; evaluate adds the real-kernel row; a rerun reuses the stage; predict runs it. Measured
    (random weights, 128², ONNX Runtime): embedding SQNR vs the static twin 30–40 dB (per-tensor codes flip at
    rounding boundaries as float op order differs; per layer the agreement is 2e-7, test above)."""
    import json
    from pathlib import Path

    from flows.ptq import sam2_ptq
    from sam2ptq_core.export.predict import main as predict_main
    from tests.helpers import REDUCED_CFG, ROOT
    ovs = [f"cache.root={tmp_path / 'c'}", f"output.root={tmp_path / 'o'}", "onnx={runtime: onnxruntime}"]
    out = Path(sam2_ptq(str(REDUCED_CFG), ovs))
    info = json.loads((out / "onnx" / "onnx.json").read_text())
    assert info["enabled"] and info["runtime"] == "onnxruntime" and info["layers"] == 23
    assert (out / "onnx" / "encoder.onnx").stat().st_size == info["bytes"]
    sq = info["sqnr_db"]
    assert sq["vs_static_fake_quant"]["fpn0"] > 40 and sq["vs_static_fake_quant"]["embedding"] > 25, sq
    assert set(info["latency_s"]) == {"torch_fp32", "torch_bf16", "onnxruntime"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["runtime"]["runtime"] == "onnxruntime" and 0 < m["runtime"]["masks"]["miou_vs_fp"] <= 1
    assert "## Real kernels (onnx/encoder.onnx)" in (out / "report.md").read_text()
    again = Path(sam2_ptq(str(REDUCED_CFG), ovs))
    assert json.loads((again / "stages.json").read_text())["onnx_export"]["reused"]
    img = str(ROOT / "examples/images/coffee.jpg")
    for rt in ("onnxruntime", "fake"):
        assert predict_main(["--run", str(out), "--image", img, "--point", "100,80", "--runtime", rt,
                             "--out", str(tmp_path / f"{rt}.png")]) == 0
    plain = Path(sam2_ptq(str(REDUCED_CFG), [*ovs[:2], "output.job=plain"]))
    assert not (plain / "onnx").exists()
    assert predict_main(["--run", str(plain), "--image", img, "--point", "100,80", "--runtime", "openvino",
                         "--out", str(tmp_path / "x.png")]) == 2
