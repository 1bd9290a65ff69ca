"""One linear layer through the whole recipe: rotate → smooth → low-rank branch → GPTQ/RTN residual.

Transformed coordinates (DeepCompressor's and QuaRot's order: smoothing acts in the rotated basis):
X' = (X·R) / s and W' = (W·R)·diag(s), so X'·W'ᵀ = X·Wᵀ exactly (R orthogonal).
The quantized layer computes  y = Qa(X')·Q(W' − b·a)ᵀ + (X'·aᵀ)·bᵀ + bias,  the branch on the unquantized X'.
Shapes: W [out, in], X [tokens, in], s [in]; R is a Rotation (fast Hadamard transform).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .gptq import gptq_quantize
from .lowrank import low_rank_decompose, top_r_svd
from .qdq import quantize_dequantize, static_params, static_qparams
from .quantizers import QTensor, dequantize, fake_quantize, quantize
from .rotation import Rotation
from .scheme import GELU_SHIFT, LayerScheme
from .statistics import LayerStats, transform_stats

__all__ = ["LayerSpec", "LayerQuant", "transform_weight", "transform_input", "quantized_output",
           "smoothing_objective", "quantize_layer", "layer_errors", "round_branch", "GELU_SHIFT", "shifted_spec",
           "spec_for", "folded_bias", "kernel_bias", "quantized_linear"]



@dataclass(frozen=True)
class LayerSpec:
    """Everything that decides how one layer is quantized (a flat view of the wgts/ipts/low_rank config)."""
    w_dtype: str
    w_group: int = -1
    a_dtype: str | None = None
    a_group: int = -1
    rank: int = 0
    lowrank_iters: int = 1
    randomized_svd: bool = True
    gptq: bool = True
    block_size: int = 128
    damp_percentage: float = 0.01
    num_inv_tries: int = 250
    act_order: bool = False
    seed: int = 0
    scale_dtype: str | None = None  # "float16"/"bfloat16": scales, smooth and branch exactly representable in it
    a_shift: float = 0.0  # input shift before quantization (unsigned activations), folded into the bias
    a_static: bool = False  # static per-tensor activations (uint8): ranked with the token sample's static range
    static_method: str = "mse"  # how a static range is chosen (qdq.static_qparams)

    @property
    def torch_scale_dtype(self) -> torch.dtype | None:
        return None if self.scale_dtype is None else getattr(torch, self.scale_dtype)


def spec_for(scheme: LayerScheme, settings: LayerSpec) -> LayerSpec:
    """``settings`` (GPTQ, branch fit, seed, scale dtype) with the formats of ``scheme``."""
    from dataclasses import replace
    return replace(settings, w_dtype=scheme.w_dtype, w_group=scheme.w_group, a_dtype=scheme.a_dtype,
                   a_group=scheme.a_group, rank=scheme.rank, a_shift=scheme.shift, a_static=scheme.a_static)


def shifted_spec(spec: LayerSpec, shift: float = GELU_SHIFT) -> LayerSpec:
    """The spec of a layer whose input is shifted by ``shift`` and quantized unsigned with the same bits."""
    return spec_for(LayerScheme(spec.w_dtype, spec.w_group, spec.a_dtype, spec.a_group, rank=spec.rank).shifted(shift),
                    spec)


@dataclass
class LayerQuant:
    """Result for one layer: dequantized residual ``weight`` [out, in] and its codes ``q``; branch ``a``/``b``;
    ``fallback`` message if GPTQ fell back to RTN."""
    weight: torch.Tensor
    q: QTensor
    a: torch.Tensor
    b: torch.Tensor
    fallback: str | None = None


def transform_weight(W: torch.Tensor, s: torch.Tensor | None, R: Rotation | None, dtype=torch.float64) -> torch.Tensor:
    """W' = (W·R)·diag(s)."""
    Wd = W.to(dtype)
    if R is not None:
        Wd = R.apply(Wd)
    return Wd * s.to(dtype) if s is not None else Wd


def transform_input(X: torch.Tensor, s: torch.Tensor | None, R: Rotation | None, dtype=torch.float64,
                    shift: float = 0.0) -> torch.Tensor:
    """X' = ((X + shift)·R) / s, in ``dtype``: the one implementation of the input transform (calibration
    statistics, the smoothing search, QuantLinear and so the ONNX graph)."""
    Xd = X.to(dtype)
    if shift:
        Xd = Xd + shift
    if R is not None:
        Xd = R.apply(Xd)
    return Xd / s.to(dtype) if s is not None else Xd


def quantized_output(Xt: torch.Tensor, lq: LayerQuant, spec: LayerSpec) -> torch.Tensor:
    """y (no bias) of the quantized layer for inputs already in transformed coordinates, in Xt's dtype."""
    dt = Xt.dtype
    y = _input_quantized(Xt, spec) @ lq.weight.to(dt).T
    if lq.a.numel():
        y = y + (Xt @ lq.a.to(dt).T) @ lq.b.to(dt).T
    return y


def _static_on(Xt: torch.Tensor, spec: LayerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Static parameters of transformed inputs ``Xt`` (the token sample stands for the calibration images)."""
    return static_params(static_qparams(float(Xt.min()), float(Xt.max()), Xt, spec.static_method, spec.a_dtype))


def _input_quantized(X: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    if not spec.a_dtype:
        return X
    if spec.a_static:
        return quantize_dequantize(X.float(), *_static_on(X, spec)).to(X.dtype)
    return fake_quantize(X.float(), spec.a_dtype, spec.a_group).to(X.dtype)


def _rtn_layer(Wt: torch.Tensor, spec: LayerSpec, X: torch.Tensor, Xq: torch.Tensor) -> LayerQuant:
    """The quick stand-in the smoothing search ranks candidates with: one branch fit (no alternation) and RTN, in
    the dtype of Wt."""
    if spec.rank > 0:
        r = low_rank_decompose(Wt, spec.rank, spec.w_dtype, spec.w_group, 1, X, spec.randomized_svd, spec.seed,
                               spec.torch_scale_dtype, Xq=Xq, work_dtype=Wt.dtype)
        return LayerQuant(r.weight.to(Wt.dtype), r.q, r.a, r.b)
    q = quantize(Wt, spec.w_dtype, spec.w_group, scale_dtype=spec.torch_scale_dtype)
    empty = Wt.new_zeros(0, Wt.shape[1]).float()
    return LayerQuant(dequantize(q, Wt.dtype), q, empty, Wt.new_zeros(Wt.shape[0], 0).float())


def smoothing_objective(X: torch.Tensor, W: torch.Tensor, R: Rotation | None, spec: LayerSpec,
                        dtype: torch.dtype = torch.float32):
    """objective(s) = ||X·Wᵀ − y_q(s)||² with RTN (plus a one-shot branch) in place of GPTQ, as DeepCompressor
    does. Evaluated in ``dtype``, float32 by default: it only ranks candidates (benchmarks/RESULTS.md compares it
    with float64), and the squared error is summed in float64."""
    X, W = X.to(dtype), W.to(dtype)
    ref = X @ W.T

    def objective(s: torch.Tensor) -> float:
        Xt = transform_input(X, s, R, dtype)
        lq = _rtn_layer(transform_weight(W, s, R, dtype), spec, Xt, _input_quantized(Xt, spec))
        return float((quantized_output(Xt, lq, spec) - ref).pow(2).sum(dtype=torch.float64))
    return objective


def quantize_layer(W: torch.Tensor, stats: LayerStats, s: torch.Tensor | None, R: Rotation | None,
                   spec: LayerSpec) -> LayerQuant:
    """Branch from the alternating fit, then GPTQ (or RTN) on the residual W' − b·a with the transformed Hessian."""
    Wt = transform_weight(W, s, R)
    st = transform_stats(stats, s, R)
    X = st.sample if st.sample.shape[0] else None
    sd = spec.torch_scale_dtype
    if spec.rank > 0:
        # the alternation runs in float32 (errors summed in float64): on tiny/large-sized layers its output error
        # equals the float64 fit's within ±0.3 % and it is 2× faster on CPU, far more on consumer GPUs (RESULTS.md)
        lr = low_rank_decompose(Wt.float(), spec.rank, spec.w_dtype, spec.w_group, spec.lowrank_iters,
                                None if X is None else X.float(), spec.randomized_svd, spec.seed, sd,
                                Xq=None if X is None else _input_quantized(X, spec).float(), work_dtype=torch.float32)
        a, b = lr.a, lr.b
        if sd is not None:
            a, b = round_branch(a, b, s, sd)
    else:
        a, b = top_r_svd(Wt, 0)
    res = (Wt - b.double() @ a.double()).float()
    if not spec.gptq:
        q = quantize(res, spec.w_dtype, spec.w_group, scale_dtype=sd)
        return LayerQuant(dequantize(q), q, a.float(), b.float())
    g = gptq_quantize(res, st.hessian_sum.float(), spec.w_dtype, spec.w_group, spec.block_size,
                      spec.damp_percentage, spec.num_inv_tries, spec.act_order, sd)
    return LayerQuant(g.weight, g.q, a.float(), b.float(), g.fallback)


def round_branch(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor | None, dt: torch.dtype):
    """Branch factors exactly representable in a 16-bit export: b in ``dt``; a such that a / s (nunchaku's
    ``lora_down``, fed the unsmoothed input) is in ``dt`` and a = (a / s)·s holds exactly in float32
    (a product of two 16-bit significands fits float32's 24 bits)."""
    b16 = b.to(dt).float()
    if s is None:
        return a.to(dt).float(), b16
    s32 = s.float()
    down = (a.float() / s32).to(dt).float()
    return down * s32, b16


def folded_bias(W: torch.Tensor, bias: torch.Tensor | None, shift: float) -> torch.Tensor | None:
    """The float bias of a layer whose input arrives shifted, in float64: b − shift·W·1 (DeepCompressor's
    ShiftedLinear bias); the bias itself without a shift; None when there is neither."""
    if bias is None and not shift:
        return None
    b = bias.double() if bias is not None else torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    return b - shift * W.double().sum(dim=1) if shift else b


def kernel_bias(bias: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, s: torch.Tensor | None,
                shift: float, dt: torch.dtype | None = None) -> torch.Tensor:
    """The bias of a shifted layer as nunchaku's kernel adds it. The kernel quantizes (x + shift) / s but feeds the
    branch the unshifted input through lora_down = a / s, so the branch's share of the shift moves into the bias:
    bias + b·(a / s)·(shift·1), in float64 in the order DeepCompressor's converter uses ((b·down)·shift), then
    rounded to the 16-bit export dtype ``dt`` when given. ``bias`` is the folded bias b − shift·W·1 (what
    DeepCompressor's ShiftedLinear holds); without a shift or a branch it is returned unchanged."""
    if not shift or a is None or not a.numel():
        return bias
    down = a.double() / s.double() if s is not None else a.double()
    base = bias.double() if bias is not None and bias.numel() else torch.zeros(b.shape[0], dtype=torch.float64)
    t = base + ((b.double() @ down) @ torch.full((down.shape[1], 1), float(shift), dtype=torch.float64)).view(-1)
    return t.float() if dt is None else t.to(dt).float()


def quantized_linear(x: torch.Tensor, weight, bias: torch.Tensor | None, s: torch.Tensor | None,
                     a: torch.Tensor | None, b: torch.Tensor | None, a_dtype: str | None, a_group: int,
                     shift: float = 0.0, R: Rotation | None = None,
                     a_static: tuple[torch.Tensor, torch.Tensor] | None = None, observe=None) -> torch.Tensor:
    """The one quantized forward (QuantLinear's, the per-layer errors', the exported ONNX graph's; the smoothing
    search keeps its own fast path on pre-transformed inputs): y = Qa((x + shift)·R / s)·Wᵀ + ((x·R) / s · aᵀ)·bᵀ +
    bias, in x's dtype. The branch reads the unshifted input, as nunchaku's kernel feeds it; ``bias`` is the
    kernel's (``kernel_bias``).

    ``weight``: the dequantized weight [out, in], or a ``qdq.PackedWeight`` that dequantizes its codes to Wᵀ
    [in, out] (what the export traces: DequantizeLinear → MatMul). ``a_static``: (scale, zero) of static per-tensor
    activations (``qdq.quantize_dequantize``, ONNX's QuantizeLinear → DequantizeLinear) instead of dynamic
    per-token groups. ``observe(xt)``: called with the tensor the activation quantizer reads (calibration of static
    ranges)."""
    F = torch.nn.functional
    xt = transform_input(x, s, R, x.dtype, shift)
    if observe is not None:
        observe(xt)
    if a_dtype is None:
        xq = xt
    elif a_static is not None:
        xq = quantize_dequantize(xt, *a_static)
    else:
        xq = fake_quantize(xt, a_dtype, a_group)
    bias = None if bias is None else bias.to(x.dtype)
    if isinstance(weight, torch.Tensor):
        y = F.linear(xq, weight.to(x.dtype), bias)
    else:
        y = xq @ weight().to(x.dtype)
        y = y + bias if bias is not None else y
    if a is not None and a.numel():
        xb = transform_input(x, s, R, x.dtype) if shift else xt
        y = y + F.linear(F.linear(xb, a.to(x.dtype)), b.to(x.dtype))
    return y


def layer_errors(W: torch.Tensor, bias: torch.Tensor | None, X: torch.Tensor, lq: LayerQuant,
                 s: torch.Tensor | None, R: Rotation | None, spec: LayerSpec) -> dict:
    """Relative weight error of the effective weight and relative output error on the token sample X (the layer's
    raw input: a shifted layer sees X + shift and the bias folded by −shift·W·1, as it runs)."""
    w_eff = lq.weight.double() + lq.b.double() @ lq.a.double()
    if s is not None:
        w_eff = w_eff / s.double()
    if R is not None:
        w_eff = R.apply_t(w_eff)
    w_err = float((w_eff - W.double()).norm() / W.double().norm().clamp_min(1e-30))
    ref = X.double() @ W.double().T
    if bias is not None:
        ref = ref + bias.double()
    folded = folded_bias(W, bias, spec.a_shift)
    kb = None if folded is None else kernel_bias(folded, lq.a, lq.b, s, spec.a_shift).double()
    sd = None if s is None else s.double()
    static = _static_on(transform_input(X, sd, R, torch.float64, spec.a_shift), spec) if spec.a_static else None
    y = quantized_linear(X.double(), lq.weight.double(), kb, sd, lq.a.double(), lq.b.double(), spec.a_dtype,
                         spec.a_group, spec.a_shift, R, static)
    o_err = float((y - ref).norm() / ref.norm().clamp_min(1e-30))
    return {"weight_rel_err": w_err, "output_rel_err": o_err}
