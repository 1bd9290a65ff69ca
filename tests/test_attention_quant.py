"""Q·Kᵀ in int8 (``quant.ipts.attention``, sam2/attention.py): the quantized attention against a float64 model of
its definition, observing changes nothing, and the runtimes' own codes for query and key equal ours."""
import copy

import numpy as np
import pytest
import torch

from sam2ptq_core.algorithms.qdq import RangeObserver
from sam2ptq_core.sam2 import attention
from sam2ptq_core.sam2.loading import build_random
from sam2ptq_core.sam2.quantized_model import convert_static, prepare_static
from tests.helpers import ARCH


def _model():
    return build_random("tiny", 0, 128, ARCH).eval()


def _calibrated(m, x):
    qm = copy.deepcopy(m)
    obs = prepare_static(qm, 0, attention=True)
    with torch.no_grad():
        qm.get_image_embeddings(x)
    qp = {k: o.qparams("mse", "sint8") for k, o in obs.items()}
    return convert_static(qm, qp), qp


@torch.no_grad()
def _reference(mod, x: torch.Tensor, qp: dict, name: str) -> torch.Tensor:
    """Hiera's attention (a block without query pooling) in float64, query and key on the sint8 grid
    q = clamp(round(v / s), −128, 127)·s, written out from the definition."""
    b, h, w, _ = x.shape
    x = x.double()
    qkv = (x @ mod.qkv.weight.double().T + mod.qkv.bias.double()).reshape(b, h * w, 3, mod.num_attention_heads, -1)
    q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))

    def grid(t, which):
        s = float(qp[f"{name}.{which}"].scale)
        return torch.clamp(torch.round(t / s), -128, 127) * s
    p = torch.softmax(grid(q, "query") @ grid(k, "key").transpose(2, 3) * mod.scale, dim=-1)
    out = (p @ v).transpose(1, 2).reshape(b, h, w, -1)
    return out @ mod.proj.weight.double().T + mod.proj.bias.double()


def test_observing_changes_nothing_and_names_every_query_and_key():
    m, x = _model(), torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    qm = copy.deepcopy(m)
    obs = prepare_static(qm, 0, attention=True)
    names = list(attention.attention_modules(m))
    assert set(obs) >= {f"{n}.{t}" for n in names for t in ("query", "key")} and len(names) == 5
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(m.get_image_embeddings(x), qm.get_image_embeddings(x)))
    assert all(o.seen == 1 for k, o in obs.items() if k.endswith((".query", ".key")))


def test_quantized_attention_equals_its_float64_definition():
    """Each attention module without query pooling, in float64 with the calibrated query/key parameters, against
    the definition written out: measured 5.3e-8 – 5.5e-8 relative (the same codes; transformers' eager attention
    takes its softmax in float32, so float64 stops there; tolerance 1e-6). The float32 module: 2.5e-7 – 3.5e-7
    relative (tolerance 1e-5). Blocks 0 and 3 of the reduced model (the others pool their queries)."""
    m, g = _model(), torch.Generator().manual_seed(1)
    qm, qp = _calibrated(m, torch.randn(1, 3, 128, 128, generator=g))
    checked = 0
    for name, mod in attention.attention_modules(qm).items():
        if mod.query_stride:
            continue
        x = torch.randn(2, 8, 8, mod.dim, generator=g)
        want = _reference(mod, x, qp, name)
        with torch.no_grad():
            got64 = copy.deepcopy(mod).double()(x.double())
            got32 = mod(x)
        assert float((got64 - want).norm() / want.norm()) < 1e-6, name
        assert float((got32.double() - want).norm() / want.norm()) < 1e-5, name
        checked += 1
    assert checked == 2


def test_attention_config_is_8bit_only():
    from sam2ptq_core.config import load_config
    from tests.helpers import REDUCED_CFG
    with pytest.raises(ValueError, match="attention quantizes"):
        load_config(REDUCED_CFG, ["quant.ipts.attention=true"])  # reduced.yaml's activations are sint4
    assert load_config(REDUCED_CFG, ["quant.ipts.attention=true", "quant.ipts.dtype=sint8",
                                     "quant.ipts.group_shapes=[[1, -1]]"]).quant.ipts.attention


class _Attn(torch.nn.Module):
    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x):
        return self.mod(x)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_query_key_codes_equal_ours(tmp_path, runtime):
    """One attention module traced with static query/key, every QuantizeLinear's input and codes made graph
    outputs: our quantizer on the runtime's own input gives the runtime's codes (measured mismatch 0 on both
    runtimes; tolerance 1e-4), and the output matches eager at 1.8e-7 (ONNX Runtime) / 2.6e-7 (OpenVINO f32)
    relative (tolerance 1e-5). Transpose → QuantizeLinear → DequantizeLinear → MatMul is the traced pattern."""
    pytest.importorskip("onnx")
    from sam2ptq_core.export.onnx_graph import export_module
    from sam2ptq_core.export.runtimes import available_runtimes
    if runtime not in available_runtimes():
        pytest.skip(f"{runtime} is not installed")
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    m, g = _model(), torch.Generator().manual_seed(2)
    qm, _ = _calibrated(m, torch.randn(1, 3, 128, 128, generator=g))
    mod = attention.attention_modules(qm)["blocks.3.attn"]  # global attention, 2 heads
    x = torch.randn(1, 8, 8, mod.dim, generator=g)
    path = tmp_path / "attn.onnx"
    export_module(path, _Attn(mod), (x,), ["x"], ["y"])
    model = onnx.load(str(path))
    qls = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(qls) == 2
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    assert {producer.get(n.input[0]) for n in qls} <= {"Transpose", "Slice", "Squeeze", "Reshape", "Gather"}
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in qls:
        model.graph.output.append(helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None))
        model.graph.output.append(helper.make_tensor_value_info(n.output[0], TensorProto.INT8, None))
    probe = tmp_path / "probe.onnx"
    onnx.save(model, str(probe))
    if runtime == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.add_session_config_entry("session.x64quantprecision", "1")
        outs = ort.InferenceSession(str(probe), so).run(None, {"x": x.numpy()})
    else:
        import openvino as ov

        from tests.helpers import skip_without_int8_dot_products
        skip_without_int8_dot_products()
        c = ov.Core().compile_model(str(probe), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        r = c.create_infer_request().infer({0: x.numpy()})
        outs = [r[o] for o in c.outputs]
    for i, n in enumerate(qls):
        scale, zero = init[n.input[1]], init[n.input[2]]
        assert zero.dtype == np.int8 and int(zero) == 0
        v, codes = outs[1 + 2 * i], outs[2 + 2 * i]
        ours = np.clip(np.round(v / scale), -128, 127).astype(np.int8)
        assert float((ours != codes).mean()) <= 1e-4, n.name
    with torch.no_grad():
        want = mod(x)
    err = float((torch.from_numpy(outs[0]) - want).norm() / want.norm())
    assert err < 1e-5, err


def test_attention_parameters_select_the_modules():
    """``build_quantized`` and ``convert_static`` take the attention entries from the same parameters as the
    linears: a model built from them quantizes exactly the modules named."""
    m, g = _model(), torch.Generator().manual_seed(3)
    qm, qp = _calibrated(m, torch.randn(1, 3, 128, 128, generator=g))
    mods = attention.attention_modules(qm)
    assert all(md.qk_quant.static for md in mods.values())
    from sam2ptq_core.export.onnx_graph import activation_format  # what the file's metadata and README say
    assert activation_format(qm).endswith("Q·Kᵀ sint8 ×5") and activation_format(m) == "float"
    one = {k: v for k, v in qp.items() if k.startswith("blocks.1.attn.")}
    m2 = copy.deepcopy(m)
    assert attention.set_static(m2, one) == 1
    flags = {n: getattr(md, "qk_quant", None) is not None and md.qk_quant.static
             for n, md in attention.attention_modules(m2).items()}
    assert flags == {n: n == "blocks.1.attn" for n in mods}
    ob = RangeObserver()
    ob(torch.ones(3))
    assert attention.set_static(copy.deepcopy(m), {"blocks.0.attn.qkv": ob.qparams()}) == 0
