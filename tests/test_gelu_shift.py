"""SVDQuant's unsigned activations after GELU: statistics of X + c follow exactly from those of X, and a shifted
layer with the shift folded into its bias computes the unshifted layer."""
from dataclasses import replace

import torch

from sam2ptq_core.algorithms.layer_recipe import GELU_SHIFT, LayerQuant, LayerSpec, layer_errors, shifted_spec
from sam2ptq_core.algorithms.model_recipe import export_bias
from sam2ptq_core.algorithms.quantizers import quantize
from sam2ptq_core.algorithms.scheme import LayerScheme
from sam2ptq_core.algorithms.statistics import StatsAccumulator, shift_stats
from sam2ptq_core.sam2.quantized_model import LayerArtifacts, QuantLinear
from tests.helpers import scheme_of


def _gelu_inputs(n=3000, k=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.gelu(torch.randn(n, k, generator=g, dtype=torch.float64) * 2)


def test_shifted_statistics_equal_direct_statistics():
    """The formula in float64: statistics of X built exactly, shifted, against X + c computed directly. Measured:
    Σ XᵀX relative error 1.8e-15 (tolerance 1e-13), sums 3e-16 relative. Through the capture accumulator (float32
    chunks, both sides): 6.2e-8 relative (tolerance 1e-6)."""
    from sam2ptq_core.algorithms.statistics import LayerStats
    x = _gelu_inputs()
    xs = x + GELU_SHIFT
    st = LayerStats(x.abs().amax(0), x.T @ x, x.shape[0], x[:256], x.sum(0), x.amin(0), x.amax(0))
    got = shift_stats(st, GELU_SHIFT)
    err = float((got.hessian_sum - xs.T @ xs).norm() / (xs.T @ xs).norm())
    assert err < 1e-13, err
    assert torch.allclose(got.colsum, xs.sum(0), rtol=1e-14) and torch.equal(got.colmin, xs.amin(0))
    assert torch.equal(got.absmax, xs.abs().amax(0).float()) and float(got.colmin.min()) > 0  # all positive
    assert torch.allclose(got.sample, xs[:256].float())
    a, b = StatsAccumulator(96, 256, seed=1, chunk=700), StatsAccumulator(96, 256, seed=1, chunk=700)
    for i in range(0, 3000, 500):
        a.add(x[i:i + 500])
        b.add(xs[i:i + 500])
    got, want = shift_stats(a.result(), GELU_SHIFT), b.result()
    err = float((got.hessian_sum - want.hessian_sum).norm() / want.hessian_sum.norm())
    assert err < 1e-6, err
    assert torch.allclose(got.colsum, want.colsum, rtol=1e-6) and torch.allclose(got.colmax, want.colmax, atol=1e-6)
    assert torch.allclose(got.sample, want.sample.float(), atol=2e-3)  # want's sample is float16


def test_shift_is_exact_in_float_and_unsigned_int8_loses_little():
    """A layer after GELU: input + c, bias − c·W·1. Without activation quantization (infinite precision) the
    output equals the original layer's: measured max relative difference 8.3e-16 in float64 (tolerance 1e-13).
    At 8 bits the shifted uint8 path has half the error of plain sint8: 0.0043 vs 0.0081 relative."""
    x = _gelu_inputs(500, 96)
    g = torch.Generator().manual_seed(1)
    W, bias = torch.randn(40, 96, generator=g, dtype=torch.float64), torch.randn(40, generator=g, dtype=torch.float64)
    lin = torch.nn.Linear(96, 40).double()
    lin.weight.data, lin.bias.data = W.clone(), bias.clone()
    with torch.no_grad():
        ref = lin(x)
    spec = shifted_spec(LayerSpec(w_dtype="sint8", a_dtype=None))
    folded = export_bias(lin, spec).double()
    assert torch.allclose(folded, (bias - GELU_SHIFT * W.sum(1)).float().double())
    float_in = LayerScheme("sint8").shifted(GELU_SHIFT)  # activations not quantized
    art = LayerArtifacts(float_in, W, bias - GELU_SHIFT * W.sum(1), None, None, None)
    y = QuantLinear(art).double()(x)
    rel = float((y - ref).abs().max() / ref.abs().max())
    assert rel < 1e-13, rel
    # quantized at 8 bits: the shifted input is all ≥ 0, uint8 uses the whole [0, 255] range on it
    w8a8 = LayerScheme("sint8", -1, "sint8", -1)
    ql = QuantLinear(replace(art, scheme=w8a8.shifted(GELU_SHIFT))).double()
    assert ql.scheme.a_dtype == "uint8"
    with torch.no_grad():
        rel8 = float((ql(x) - ref).norm() / ref.norm())
        plain = QuantLinear(LayerArtifacts(w8a8, W, bias, None, None, None)).double()
        rel8_signed = float((plain(x) - ref).norm() / ref.norm())
    assert rel8 < 0.6 * rel8_signed, (rel8, rel8_signed)


def test_layer_errors_of_a_shifted_layer_match_the_module():
    """layer_errors (the per-layer table) and QuantLinear agree on a shifted uint4 layer: same output error."""
    x = _gelu_inputs(400, 64).float()
    g = torch.Generator().manual_seed(2)
    W, bias = torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    spec = shifted_spec(LayerSpec(w_dtype="sint4", w_group=-1, a_dtype="sint4", a_group=-1))
    assert spec.a_dtype == "uint4" and spec.a_shift == GELU_SHIFT
    q = quantize(W, "sint4", -1)
    from sam2ptq_core.algorithms.quantizers import dequantize
    lq = LayerQuant(dequantize(q), q, torch.zeros(0, 64), torch.zeros(32, 0))
    e = layer_errors(W, bias, x, lq, None, None, spec)
    folded = (bias.double() - GELU_SHIFT * W.double().sum(1)).float()
    y = QuantLinear(LayerArtifacts(scheme_of(spec), lq.weight, folded, None, None, None))(x)
    ref = x.double() @ W.double().T + bias.double()
    direct = float((y.double() - ref).norm() / ref.norm())
    assert abs(e["output_rel_err"] - direct) < 1e-5 * direct, (e["output_rel_err"], direct)


def test_shifted_layer_with_smoothing_and_branch_is_exact_in_float():
    """With a low-rank branch and smoothing: the branch reads the unshifted input (as nunchaku's kernel feeds it) and
    the bias holds −shift·W·1 + b·(a/s)·shift·1 (kernel_bias). Without activation quantization the module computes
    the original float layer: measured max relative difference 6.8e-9 (the kernel bias is stored in float32; the
    rest runs in float64; tolerance 1e-7). Feeding the
    branch the unshifted input with only the folded bias (main's nunchaku export) is off by 0.42 relative."""
    from sam2ptq_core.algorithms.layer_recipe import kernel_bias
    x = _gelu_inputs(300, 64)
    g = torch.Generator().manual_seed(3)
    W, bias = torch.randn(48, 64, generator=g, dtype=torch.float64), torch.randn(48, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(64, generator=g, dtype=torch.float64)
    a, b = torch.randn(8, 64, generator=g, dtype=torch.float64), torch.randn(48, 8, generator=g, dtype=torch.float64)
    resid = W * s - b @ a  # W' = W·diag(s) = resid + b·a
    folded = bias - GELU_SHIFT * W.sum(1)
    kb = kernel_bias(folded, a, b, s, GELU_SHIFT).double()
    float_in = LayerScheme("sint4").shifted(GELU_SHIFT)  # activations not quantized
    ql = QuantLinear(LayerArtifacts(float_in, resid, kb, s, a, b)).double()
    ref = x @ W.T + bias
    with torch.no_grad():
        y = ql(x)
        wrong = QuantLinear(LayerArtifacts(float_in, resid, folded, s, a, b)).double()(x)
    assert float((y - ref).abs().max() / ref.abs().max()) < 1e-7
    assert float((wrong - ref).norm() / ref.norm()) > 0.01
