"""The nunchaku export checked against its consumers, not against our own reader:

- DeepCompressor's converter (deepcompressor-toolkit 0.1.0, installed ``--no-deps`` by scripts/setup.sh) run on our
  cache files gives the same tensors as our export: qweight and wscales bit for bit, bias and branch within one
  16-bit rounding.
- A float64 model of nunchaku's kernel (tests/reference/nunchaku_kernel.py, from the documented layout and semantics)
  run on our packed tensors computes what QuantLinear computes, for every layer kind: plain, smoothed, branch,
  shifted (unsigned after GELU, smoothed, branch) and a shared branch (two layers with one down-projection).
"""
import torch

from sam2ptq_core.algorithms.layer_recipe import GELU_SHIFT, LayerSpec, shifted_spec
from sam2ptq_core.algorithms.model_recipe import quantize_all, saved_layers
from sam2ptq_core.algorithms.statistics import LayerStats
from sam2ptq_core.export.cache_files import write_cache_files
from sam2ptq_core.export.nunchaku import _layer_tensors
from sam2ptq_core.sam2.quantized_model import QuantLinear, artifacts_from_saved
from tests.helpers import scheme_of
from tests.reference.nunchaku_kernel import deepcompressor_convert, kernel_forward

DT = torch.float16
SPEC = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=16, lowrank_iters=3, gptq=False,
                 scale_dtype="float16", seed=0)
NO_BRANCH = LayerSpec(w_dtype="sint4", w_group=64, a_dtype="sint4", a_group=64, rank=0, gptq=False,
                      scale_dtype="float16")


def _stats(x: torch.Tensor) -> LayerStats:
    x = x.double()
    return LayerStats(x.abs().amax(0).float(), x.T @ x, x.shape[0], x[:512].float(), x.sum(0), x.amin(0), x.amax(0))


def _layers():
    """Six linears of every kind, with their inputs (the shifted one reads GELU outputs)."""
    g = torch.Generator().manual_seed(0)
    lin = {}
    for name, (k, n) in {"plain": (128, 96), "smoothed": (96, 128), "branch": (192, 64), "shifted": (256, 128),
                         "shared_a": (96, 192), "shared_b": (96, 64)}.items():
        m = torch.nn.Linear(k, n)
        m.weight.data = torch.randn(n, k, generator=g) * 0.05
        m.bias.data = torch.randn(n, generator=g) * 0.1
        lin[name] = m
    x = {k: torch.randn(600, m.in_features, generator=g) * (1 + 4 * torch.rand(m.in_features, generator=g))
         for k, m in lin.items()}
    x["shifted"] = torch.nn.functional.gelu(x["shifted"])
    x["shared_b"] = x["shared_a"]
    return lin, x


def _quantized():
    lin, x = _layers()
    stats = {k: _stats(v) for k, v in x.items()}
    sm_g = torch.Generator().manual_seed(5)
    smooth = {k: (0.5 + torch.rand(lin[k].in_features, generator=sm_g)).to(DT).float()
              for k in ("smoothed", "shifted", "shared_a", "shared_b")}
    smooth["shared_b"] = smooth["shared_a"]
    spec = {"plain": NO_BRANCH, "smoothed": NO_BRANCH, "branch": SPEC, "shifted": shifted_spec(SPEC),
            "shared_a": SPEC, "shared_b": SPEC}
    lqs = quantize_all(lin, stats, smooth, {k: None for k in lin}, spec, groups=[("shared_a", "shared_b")])
    return lin, x, smooth, saved_layers(lqs, lin, spec, smooth), {k: scheme_of(sp) for k, sp in spec.items()}


def test_kernel_model_agrees_with_quantlinear_on_every_layer_kind():
    """Measured relative output error (kernel model vs QuantLinear, both float64), every kind: 2.2e-8 – 3.9e-8
    (max abs 4.6e-7; float op order only, no activation code rounds differently here); tolerance 1e-6. The shifted
    layer with the bias main exported before (no branch share of the shift): 0.043 relative error."""
    lin, x, smooth, saved, schemes = _quantized()
    assert torch.equal(saved["shared_a"]["a"], saved["shared_b"]["a"])
    arts = artifacts_from_saved(saved, smooth, {}, schemes)
    for name, q in saved.items():
        ql = QuantLinear(arts[name]).double()
        with torch.no_grad():
            want = ql(x[name].double())
        packed = _layer_tensors(q, q["kernel_bias"] if q["kernel_bias"].numel() else None, smooth.get(name), DT)
        shift = schemes[name].shift
        got = kernel_forward(packed, x[name], shift)[:, : lin[name].out_features]
        err = float((got - want).norm() / want.norm())
        assert err < 1e-6, (name, err)
        if name == "shifted":
            assert ql.scheme.a_dtype == "uint4" and shift == GELU_SHIFT
            old = _layer_tensors(q, q["bias"], smooth.get(name), DT)  # the bias without the branch's share
            bad = kernel_forward(old, x[name], shift)[:, : lin[name].out_features]
            assert float((bad - want).norm() / want.norm()) > 0.01


def test_deepcompressor_converter_gives_our_tensors(tmp_path):
    """DeepCompressor's converter on our cache files (model.pt with the ShiftedLinear ``shift`` entry) against our
    packed tensors. Measured: every tensor bit-identical, the shifted layer's bias included (the converter adds the
    branch's share of the shift in float64 to the 16-bit folded bias, and so do we). The bias is allowed one fp16
    ulp (float64 summation order), the rest must be equal."""
    from sam2ptq_core.export.cache_files import PREFIX
    lin, x, smooth, saved, schemes = _quantized()
    model_state = {f"{PREFIX}{k}.{p}": getattr(m, p).detach() for k, m in lin.items() for p in ("weight", "bias")}
    write_cache_files(tmp_path, model_state, saved, schemes, smooth)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(state[f"{PREFIX}shifted.shift"]) == GELU_SHIFT and f"{PREFIX}plain.shift" not in state
    theirs = deepcompressor_convert(tmp_path, DT)
    assert set(theirs) == set(saved)
    for name, q in saved.items():
        ours = _layer_tensors(q, q["kernel_bias"] if q["kernel_bias"].numel() else None, smooth.get(name), DT)
        dc = theirs[name]
        assert set(dc) >= set(ours) - {"lora_down", "lora_up"}, name
        for key in ("qweight", "wscales", "smooth", "smooth_orig", "lora_down", "lora_up"):
            if key in ours:
                assert torch.equal(ours[key], dc[key]), (name, key)
        ulp = torch.finfo(DT).eps * torch.maximum(ours["bias"].abs(), dc["bias"].abs()).float()
        assert bool(((ours["bias"].float() - dc["bias"].float()).abs() <= ulp + 1e-12).all()), name
