"""GPU checks (skipped without CUDA, see conftest.py): the same core code on CUDA tensors agrees with the CPU."""
import pytest
import torch

from sam2ptq_core.algorithms.gptq import gptq_quantize
from sam2ptq_core.algorithms.lowrank import low_rank_decompose
from sam2ptq_core.algorithms.quantizers import fake_quantize
from sam2ptq_core.algorithms.rotation import apply_hadamard
from sam2ptq_core.algorithms.scheme import LayerScheme

pytestmark = pytest.mark.gpu


def _wh():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 576, generator=g)
    return torch.randn(1152, 576, generator=g) * 0.02, x.T @ x


def test_gptq_cuda_matches_cpu():
    W, H = _wh()
    cpu = gptq_quantize(W, H, "uint4", 128).weight
    gpu = gptq_quantize(W.cuda(), H.cuda(), "uint4", 128).weight.cpu()
    assert (cpu != gpu).float().mean() < 0.01  # float32 reduction order may flip a few ties


def test_fake_quant_hadamard_lowrank_on_cuda():
    x = torch.randn(64, 1152)
    assert torch.equal(fake_quantize(x.cuda(), "sint4", 64).cpu(), fake_quantize(x, "sint4", 64))
    assert torch.allclose(apply_hadamard(x.cuda()).cpu(), apply_hadamard(x), atol=1e-5)
    W, _ = _wh()
    r = low_rank_decompose(W.cuda(), 32, "sint4", 64)
    assert r.a.device.type == "cuda" and r.weight.shape == W.shape


def test_capture_quant_linear_and_evaluate_in_bf16_on_cuda():
    """What the pipeline runs on the GPU: capture in bf16, the quantized model (QuantLinear) and the evaluation.
    Statistics agree with a float32 CPU capture; the bf16 quantized model stays close to its float32 CPU twin."""
    from sam2ptq_core.sam2.capture import capture_stats
    from sam2ptq_core.sam2.evaluation import evaluate_image
    from sam2ptq_core.sam2.loading import build_random, quantizable_linears
    from sam2ptq_core.sam2.quantized_model import LayerArtifacts, quantize_model
    from tests.helpers import ARCH
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 128, 128, generator=g)
    m = build_random("tiny", 0, 128, ARCH)
    ref = capture_stats(m, [x], sample_tokens=64, seed=0)
    mc = build_random("tiny", 0, 128, ARCH).to("cuda", torch.bfloat16)
    got = capture_stats(mc, [x.to("cuda", torch.bfloat16)], sample_tokens=64, seed=0)
    for k in ref:
        rel = float((got[k].hessian_sum.double() - ref[k].hessian_sum).norm() / ref[k].hessian_sum.norm())
        assert rel < 0.05, (k, rel)  # bf16 activations: ~1e-2
    w8a8 = LayerScheme("sint8", -1, "sint8", -1)
    arts = {n: LayerArtifacts(w8a8, fake_quantize(lin.weight.detach(), "sint8", -1), lin.bias.detach(), None, None,
                              None) for n, lin in quantizable_linears(m).items()}
    qm = quantize_model(build_random("tiny", 0, 128, ARCH), arts)
    ev_cpu = evaluate_image(m, qm, x, (100, 120), 128, 2)
    mg, qg = m.to("cuda", torch.bfloat16), qm.to("cuda", torch.bfloat16)
    ev_gpu = evaluate_image(mg, qg, x.to("cuda", torch.bfloat16), (100, 120), 128, 2)
    assert all(torch.isfinite(torch.tensor(v)) for v in ev_gpu.sqnr.values())
    assert abs(ev_gpu.sqnr["embedding"] - ev_cpu.sqnr["embedding"]) < 10  # bf16 noise on top of W8A8
