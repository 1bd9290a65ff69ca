"""GPU checks (skipped without CUDA, see conftest.py): the same core code on CUDA tensors agrees with the CPU."""
import pytest
import torch

from sam2ptq_core.algorithms.gptq import gptq_quantize
from sam2ptq_core.algorithms.lowrank import low_rank_decompose
from sam2ptq_core.algorithms.quantizers import fake_quantize
from sam2ptq_core.algorithms.rotation import apply_hadamard

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
