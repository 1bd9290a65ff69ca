"""The ONNX export against its consumers: the graph is traced from QuantLinear's own forward (no second definition),
and ONNX Runtime and OpenVINO, each fed its own input, compute the activation codes our quantizer computes, layer
by layer; with activation quantization off, the graph and the eager layer agree to float32 rounding."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the '.[onnx]' extra (scripts/setup.sh installs it)")

from sam2ptq_core.algorithms.layer_recipe import GELU_SHIFT, LayerSpec, shifted_spec  # noqa: E402
from sam2ptq_core.algorithms.model_recipe import quantize_all, saved_layers  # noqa: E402
from sam2ptq_core.algorithms.rotation import Rotation  # noqa: E402
from sam2ptq_core.algorithms.statistics import StatsAccumulator  # noqa: E402
from sam2ptq_core.export.onnx_graph import export_module  # noqa: E402
from sam2ptq_core.export.runtimes import available_runtimes  # noqa: E402
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


def _layers(n_in: int = 96):
    """Each kind quantized by the pipeline's own per-layer code on inputs with outlier channels (GELU outputs for
    the shifted kind); 96 inputs give the 4-bit groups of 64 a ragged last group, 144 a Paley-only rotation."""
    g = torch.Generator().manual_seed(n_in)
    n_out, tokens = 80, 512
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


def _runtime_layers(n_in: int):
    """(inputs, {kind: QuantLinear in its runtime form}): observed on its inputs, converted to static 8-bit,
    weights packed as codes — what ``onnx_graph.runtime_model`` does to every layer of the encoder."""
    x, saved, schemes, smooth, rotation = _layers(n_in)
    out = {}
    for k, art in artifacts_from_saved(saved, smooth, rotation, schemes).items():
        ql = QuantLinear(art)
        from sam2ptq_core.algorithms.qdq import RangeObserver
        ql.observer = ob = RangeObserver(seed=1)
        with torch.no_grad():
            ql(x[k])
        ql.observer = None
        st = ql.scheme.static8()
        ql.set_static(st, ob.qparams("mse", st.a_dtype))
        dense = ql.weight.clone()
        ql.pack(saved[k])
        assert torch.equal(ql.packed().T, dense), k  # the codes dequantize to exactly the weight evaluated
        out[k] = ql
    return x, out


def _probe(path, runtime: str, x: np.ndarray, precision: str = "f32") -> dict:
    """Run the one-layer file with every QuantizeLinear's input and output as graph outputs; returns
    {"y", "x_in", "codes", "scale", "zero"} (codes as the zero point's dtype: int8 or uint8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    m = onnx.load(str(path))
    qls = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in qls:
        code_type = TensorProto.INT8 if init[n.input[2]].dtype == np.int8 else TensorProto.UINT8
        m.graph.output.append(helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None))
        m.graph.output.append(helper.make_tensor_value_info(n.output[0], code_type, None))
    probe = path.with_suffix(".probe.onnx")
    onnx.save(m, str(probe))
    if runtime == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.x64quantprecision", "1")
        outs = ort.InferenceSession(str(probe), so, disabled_optimizers=["MatMulAddFusion"]).run(None, {"x": x})
    else:
        import openvino as ov

        from tests.helpers import skip_without_int8_dot_products
        skip_without_int8_dot_products()
        cfg = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "f32" else {}
        c = ov.Core().compile_model(str(probe), "CPU", cfg)
        r = c.create_infer_request().infer({0: x})
        outs = [r[o] for o in c.outputs]
    n = qls[0]
    return {"y": outs[0], "x_in": outs[1], "codes": outs[2], "scale": init[n.input[1]], "zero": init[n.input[2]]}


RUNTIME_CASES = [(rt, p) for rt in ("onnxruntime", "openvino") for p in (("f32", "auto") if rt == "openvino"
                                                                             else ("f32",))]


@pytest.mark.parametrize("n_in", [96, 144, 128])
@pytest.mark.parametrize("runtime,precision", RUNTIME_CASES)
def test_runtime_codes_equal_ours_layer_by_layer(tmp_path, n_in, runtime, precision):
    """Each layer kind traced from QuantLinear, run on the runtime with its QuantizeLinear's input and codes as
    outputs: our quantizer applied to the runtime's own input gives the runtime's codes. Measured mismatch
    fraction: 0 on every kind, width, runtime and precision (ties at exactly .5 would be the only allowed
    difference; tolerance 1e-4). Output agreement with the eager layer: ONNX Runtime 1.5e-7 – 2e-7 relative
    (summation order only; tolerance 2e-6); OpenVINO at f32 the same on most kinds but 1.2e-4 (rotated, 4-bit),
    1.8e-4 (smoothed, 8-bit) and 4.7e-3 (uint4 groups at width 128), without the probe outputs as with them,
    although its codes equal ours (tolerance 1e-2: not yet explained); OpenVINO's default bf16 float ops: up to 4e-3
    (tolerance 2e-2)."""
    if runtime not in available_runtimes():
        pytest.skip(f"{runtime} is not installed")
    x, layers = _runtime_layers(n_in)
    for k, ql in layers.items():
        path = tmp_path / f"{k}.onnx"
        export_module(path, _One(ql), (x[k],), ["x"], ["y"])
        got = _probe(path, runtime, x[k].numpy(), precision)
        lo, hi = (-128, 127) if got["zero"].dtype == np.int8 else (0, 255)
        assert int(got["zero"]) == 0, (k, got["zero"])  # zero point 0: no compensation Subtract on OpenVINO
        ours = np.clip(np.round(got["x_in"] / got["scale"]) + got["zero"].astype(np.float32), lo, hi)
        mismatch = float((ours.astype(got["zero"].dtype) != got["codes"]).mean())
        assert mismatch <= 1e-4, (k, n_in, mismatch)
        seen = []
        ql.observer = seen.append  # the tensor eager QuantLinear quantizes
        with torch.no_grad():
            want = ql(x[k])
            ql.observer = None
            # where the runtime's own float input rounds to another code than eager's (its summation order moves a
            # value across a rounding boundary: e.g. 1 code of 73,728 on the rotated W8 layer at width 144), the
            # output is compared with eager's corrected by exactly those codes' contribution
            eager = torch.clamp(torch.round(seen[0] / float(got["scale"])) + float(got["zero"]), lo, hi)
            dq = (torch.from_numpy(got["codes"].astype(np.float32)) - eager) * float(got["scale"])
            want = want + dq @ ql.packed()
        err = float((torch.from_numpy(got["y"]) - want).norm() / want.norm())
        tol = 2e-2 if precision != "f32" else 2e-6 if runtime == "onnxruntime" else 1e-2
        assert err < tol, (k, n_in, err)


def test_graph_is_the_eager_forward_without_activation_quantization(tmp_path):
    """With activation quantization switched off, the exported layer and QuantLinear agree to float32 rounding:
    measured SQNR 135 – 136 dB with a branch or rotation, bit-identical (inf) on the rest (ONNX Runtime at its
    basic optimization level); threshold 100 dB."""
    from dataclasses import replace

    from sam2ptq_core.algorithms.metrics import sqnr_db
    x, layers = _runtime_layers(96)
    sq = {}
    for k, ql in layers.items():
        ql.scheme = replace(ql.scheme, a_dtype=None, a_static=False)
        path = tmp_path / f"{k}.onnx"
        export_module(path, _One(ql), (x[k],), ["x"], ["y"])
        import onnx
        assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(path)).graph.node}
        import onnxruntime as ort
        so = ort.SessionOptions()  # basic level: ORT's extended fusions would quantize float activations dynamically
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        got = torch.from_numpy(ort.InferenceSession(str(path), so).run(None, {"x": x[k].numpy()})[0])
        with torch.no_grad():
            sq[k] = sqnr_db(ql(x[k]), got)
        assert sq[k] > 100, (k, sq[k])


def test_traced_graph_has_the_runtime_patterns(tmp_path):
    """The traced file holds integer codes (int8 per channel, 4-bit blocks as INT4/UINT4 initializers) feeding
    DequantizeLinear → MatMul, and one QuantizeLinear → DequantizeLinear per quantized input."""
    import onnx
    x, layers = _runtime_layers(96)
    types = {}
    for k, ql in layers.items():
        path = tmp_path / f"{k}.onnx"
        export_module(path, _One(ql), (x[k],), ["x"], ["y"])
        g = onnx.load(str(path)).graph
        ops = [n.op_type for n in g.node]
        assert ops.count("QuantizeLinear") == 1 and "MatMul" in ops, (k, ops)
        types[k] = {i.data_type for i in g.initializer if i.name.endswith("codes") or "val_" in i.name}
    assert onnx.TensorProto.INT8 in types["plain"]
    assert onnx.TensorProto.INT4 in types["rotated"] and onnx.TensorProto.UINT4 in types["grouped_unsigned"]
    assert KINDS["shifted"][0].a_shift == GELU_SHIFT


def test_large_4bit_layers_store_their_codes_packed(tmp_path):
    """A layer past the exporter's folding limit (512·512 elements: 80 × 4096 codes here) still stores its 4-bit
    codes as an INT4/UINT4 initializer, two a byte, with no Cast left in the graph, and ONNX Runtime dequantizes them
    to exactly the weight eager QuantLinear multiplies by (bit-identical)."""
    import onnx
    import onnxruntime as ort
    x, layers = _runtime_layers(4096)
    for k in ("rotated", "grouped_unsigned"):
        ql = layers[k]
        path = tmp_path / f"{k}.onnx"
        export_module(path, _One(ql), (x[k],), ["x"], ["y"])
        g = onnx.load(str(path)).graph
        assert "Cast" not in [n.op_type for n in g.node], k
        codes = [i for i in g.initializer if i.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)]
        big = [i for i in codes if i.dims[0] * i.dims[-1] >= 80 * 4096]
        assert [sorted(i.dims) for i in big] == [[80, 4096]], k
        assert len(big[0].raw_data) == 80 * 4096 // 2, k  # two codes a byte
        m = onnx.load(str(path))  # the weight as ONNX Runtime dequantizes it from the packed codes
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == big[0].name)
        m.graph.output.append(onnx.helper.make_tensor_value_info(dq.output[0], onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        w = sess.run([dq.output[0]], {"x": x[k].numpy()})[0]
        packed = ql.packed().numpy()
        assert np.array_equal(w if w.shape == packed.shape else w.T, packed), k


def test_missing_runtime_is_one_line(monkeypatch):
    import sys

    from sam2ptq_core.export.runtimes import MissingRuntime, pick_runtime
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(MissingRuntime, match=r"openvino is not installed; install the extra: pip install -e "):
        pick_runtime("openvino")


@pytest.mark.slow
def test_flow_exports_and_runs_the_onnx_encoder(prefect_server, tmp_path):
    """The reduced W4A4 config with ``onnx``: the stage writes the onnx/ pair, scores the encoder against float and its
    runtime twin, times it against the float encoder on the same runtime; evaluate adds the real-kernel row; a rerun
    reuses the stage; predict runs it. Measured (random weights, 128², ONNX Runtime): embedding SQNR vs the runtime
    twin 30–40 dB (per-tensor codes flip at rounding boundaries as float op order differs over 12 blocks; layer by
    layer the codes are equal, tests above)."""
    import json
    from pathlib import Path

    from flows.ptq import sam2_ptq
    from sam2ptq_core.export.predict import main as predict_main
    from tests.helpers import REDUCED_CFG, ROOT
    ovs = [f"cache.root={tmp_path / 'c'}", f"output.root={tmp_path / 'o'}", "onnx={runtime: onnxruntime}"]
    out = Path(sam2_ptq(str(REDUCED_CFG), ovs))
    info = json.loads((out / "onnx" / "onnx.json").read_text())
    assert info["enabled"] and info["runtime"] == "onnxruntime" and info["layers"] == 23
    assert (out / "onnx" / "sam2.1_hiera_tiny.encoder.onnx").stat().st_size == info["bytes"]
    sq = info["sqnr_db"]
    assert sq["vs_runtime_twin"]["fpn0"] > 40 and sq["vs_runtime_twin"]["embedding"] > 25, sq
    assert set(info["latency_s"]) == {"float_runtime", "quantized_runtime", "torch_fp32"}
    assert info["runtime_version"] and info["speedup_vs_float_runtime"] > 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["runtime"]["runtime"] == "onnxruntime" and 0 < m["runtime"]["masks"]["miou_vs_fp"] <= 1
    assert "## Real kernels (the ONNX encoder in onnx/)" in (out / "report.md").read_text()
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


@pytest.mark.slow
def test_static_activations_are_calibrated_and_evaluated_as_shipped(prefect_server, tmp_path):
    """``quant.ipts.static: true`` (reduced config at W4A8 with the GELU shift and ``quant.ipts.attention``): the
    pipeline calibrates and evaluates static per-tensor activations (sint8, uint8 on the shifted inputs; zero point
    0; Q·Kᵀ's query and key sint8), so its own evaluation row and the ONNX file's row (ONNX Runtime) agree on the
    held-out images: measured embedding SQNR 22.053 vs 22.060 dB, mask mIoU 0.9418 vs 0.9414 (bounds: 1.5 dB,
    0.005; without attention quantization 21.821 vs 21.800 dB); the file's twin in torch is the evaluated model."""
    import json
    from pathlib import Path

    from flows.ptq import sam2_ptq
    from sam2ptq_core.export.reader import load_quantized
    from tests.helpers import REDUCED_CFG
    ovs = [f"cache.root={tmp_path / 'c'}", f"output.root={tmp_path / 'o'}", "onnx={runtime: onnxruntime}",
           "quant.ipts.dtype=sint8", "quant.ipts.gelu_shift=true", "quant.ipts.group_shapes=[[1, -1]]",
           "quant.ipts.static=true", "quant.ipts.static_images=2", "quant.ipts.attention=true", "output.job=static"]
    out = Path(sam2_ptq(str(REDUCED_CFG), ovs))
    m = json.loads((out / "metrics.json").read_text())
    schemes = json.loads((out / "scheme.json").read_text())["layers"]
    assert all(s["a_static"] and s["a_dtype"] == ("uint8" if s["shift"] else "sint8") for s in schemes.values())
    assert any(s["shift"] for s in schemes.values())
    ranges = json.loads((out / "ranges.json").read_text())
    qk = {k for k in ranges["layers"] if k.endswith((".query", ".key"))}  # quant.ipts.attention: 5 blocks' Q·Kᵀ
    assert ranges["method"] == "mse" and set(ranges["layers"]) - qk == set(schemes) and len(qk) == 10
    fq, rt = m["encoder"]["sqnr_db"]["embedding"], m["runtime"]["encoder"]["sqnr_db"]["embedding"]
    assert abs(fq - rt) < 1.5, (fq, rt)
    assert abs(m["masks"]["miou_vs_fp"] - m["runtime"]["masks"]["miou_vs_fp"]) < 0.005
    qm = load_quantized(out)  # the tree reads back with its static parameters
    from sam2ptq_core.sam2.attention import attention_modules
    from sam2ptq_core.sam2.quantized_model import quant_linears
    assert all(ql.scheme.a_static and ql.a_scale is not None for ql in quant_linears(qm).values())
    assert all(md.qk_quant.static for md in attention_modules(qm).values())
