"""Per-layer schemes: the rules from the config, their order, and a new format added in one place."""
import pytest
import torch

from sam2ptq_core.algorithms import scheme as S
from sam2ptq_core.algorithms.mixed_precision import WeightFormat, weight_bytes
from sam2ptq_core.algorithms.scheme import LayerScheme, SchemeRule, resolve
from sam2ptq_core.config import load_config
from sam2ptq_core.sam2.variants import linear_shapes
from sam2ptq_core.schemes import calibration_schemes, layer_costs, scheme_rules, shipped_schemes

NAMES = list(linear_shapes("tiny"))


def test_rules_of_a_w4a4_run_with_shift_and_fallbacks():
    q = load_config("configs/hiera_tiny_w4a4.yaml", ["quant.mixed={fallback: w8a8, layers: ['blocks.1.*']}"]).quant
    sh = shipped_schemes(q, NAMES, ["blocks.1.*", "blocks.5.mlp.proj_out"])
    base = LayerScheme("sint4", 64, "sint4", 64, 0.0, True, 32)
    assert sh["blocks.0.attn.qkv"] == base
    assert sh["blocks.0.mlp.proj_out"] == LayerScheme("sint4", 64, "uint4", 64, 0.171875, False, 32)
    # a fallback derives from the layer's own scheme: the shifted layer keeps "no rotation", the others keep theirs
    assert sh["blocks.1.attn.qkv"] == LayerScheme("sint8", -1, "sint8", -1, 0.0, True, 0, "w8a8")
    assert sh["blocks.5.mlp.proj_out"] == LayerScheme("sint8", -1, "sint8", -1, 0.0, False, 0, "w8a8")
    # blocks.1 (a stage transition) has attn.qkv, attn.proj, proj, mlp.proj_in, mlp.proj_out
    assert sum(s.fallback is not None for s in sh.values()) == 5 + 1
    # one-shot calibration quantizes every layer at the run's format; sequential knows the fallbacks already
    assert not any(s.fallback for s in calibration_schemes(q, NAMES).values())
    seq = load_config("configs/hiera_tiny_w4a4.yaml", ["quant.calib.mode=sequential",
                                                       "quant.mixed={fallback: fp16, layers: ['re:blocks\\.1\\..*']}"])
    cal = calibration_schemes(seq.quant, NAMES)
    assert {k for k, s in cal.items() if not s.quantized} == {k for k in NAMES if k.startswith("blocks.1.")}
    assert [r.why for r in scheme_rules(seq.quant)] == ["quant.wgts / quant.ipts / quant.wgts.low_rank / "
                                                        "quant.rotation", "quant.ipts.gelu_shift",
                                                        "quant.mixed (fallback fp16)"]


def test_byte_costs_come_from_each_layers_scheme():
    """blocks.0.attn.qkv is 96→288: sint4/g64 with rank 32 = 27648·0.5 + 288·2 groups·2 B + 32·384·2 B = 39552 B
    (the hand count of tests/test_mixed.py); its W8A8 fallback 27648 + 288·2 = 28224 B."""
    q = load_config("configs/hiera_tiny_w4a4.yaml", ["quant.mixed={fallback: w8a8, num_layers: 1}"]).quant
    params, cost, fb = layer_costs(q, {"blocks.0.attn.qkv": (96, 288)})
    assert params == {"blocks.0.attn.qkv": 27648} and cost["blocks.0.attn.qkv"] == 39552
    assert fb["blocks.0.attn.qkv"] == 28224


def test_rule_order_and_errors():
    a, b = LayerScheme("uint4", 128, "uint8"), LayerScheme("sint8", -1, "sint8")
    rules = [SchemeRule(("*",), a), SchemeRule(("re:blocks\\.[0-2]\\.attn\\..*",), b),
             SchemeRule(("blocks.1.*",), derive="fp16")]
    got = resolve(rules, ["blocks.0.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.proj_in", "blocks.3.attn.qkv"])
    assert got == {"blocks.0.attn.qkv": b, "blocks.1.attn.proj": LayerScheme(None, fallback="fp16"),
                   "blocks.1.mlp.proj_in": LayerScheme(None, fallback="fp16"), "blocks.3.attn.qkv": a}
    with pytest.raises(KeyError, match="no quantization scheme rule matches layer x"):
        resolve(rules[1:2], ["x"])
    with pytest.raises(ValueError, match="a rule gives a scheme or derives"):
        SchemeRule(("*",), a, derive="w8a8")
    with pytest.raises(ValueError, match="unknown layer scheme fields"):
        LayerScheme.from_dict({**a.to_dict(), "fp8": True})
    assert LayerScheme.from_dict(b.to_dict()) == b


def test_a_new_format_is_one_table_entry(monkeypatch):
    """Add sint6/uint6 to FORMATS only: the quantizer, the shifted twin, bits and byte costs follow. Measured on a
    Gaussian 64×256 weight, per-channel: relative error sint4 0.128, sint6 0.0289, sint8 0.00707 (4.4× and 4.1×:
    two more bits)."""
    from sam2ptq_core.algorithms.layer_recipe import LayerSpec, quantize_layer
    from sam2ptq_core.algorithms.quantizers import fake_quantize, quantize
    from sam2ptq_core.algorithms.statistics import StatsAccumulator
    monkeypatch.setitem(S.FORMATS, "sint6", S.QDType("sint6", True, 6, -31, 31))
    monkeypatch.setitem(S.FORMATS, "uint6", S.QDType("uint6", False, 6, 0, 63))
    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q = quantize(W, "sint6", -1)
    assert int(q.codes.abs().max()) == 31
    err = {d: float((fake_quantize(W, d, -1) - W).norm() / W.norm()) for d in ("sint4", "sint6", "sint8")}
    assert 2.5 < err["sint4"] / err["sint6"] < 6 and 2.5 < err["sint6"] / err["sint8"] < 6, err
    sch = LayerScheme("sint6", 64, "sint6", 64, rank=8)
    assert sch.bits == 6 and sch.shifted(0.171875).a_dtype == "uint6"
    assert weight_bytes(256, 64, sch.weight_format()) == weight_bytes(256, 64, WeightFormat(6, 64, False, 8))
    # the whole per-layer recipe (branch + GPTQ) runs at the new format
    acc = StatsAccumulator(256, 64, seed=0)
    acc.add(torch.randn(128, 256, generator=torch.Generator().manual_seed(1)))
    lq = quantize_layer(W, acc.result(), None, None, LayerSpec("sint6", 64, "sint6", 64, rank=8, block_size=64))
    assert int(lq.q.codes.abs().max()) <= 31 and lq.q.dtype == "sint6"
