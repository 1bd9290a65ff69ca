"""SVDQuant low-rank branch (Li et al., 2024, "SVDQuant: Absorbing Outliers by Low-Rank Components").

W ≈ L + Q(W − L) with L = b·a of rank r kept in 16-bit. Alternating fit (DeepCompressor's):

    Q_0 = 0;  L_t = top-r SVD(W − Q_{t−1});  Q_t = Q(W − L_t)

keeping the best iterate and stopping at the first iteration that does not improve. The score is the layer's
output error with a token sample X: the residual runs on the quantized input, the branch on the exact one, so
score = ||Qa(X)·Qᵀ − X·(W − L)ᵀ||² with ``Xq`` = Qa(X) (``Xq`` = X when activations stay in float); without X
it is the weight error ||W − L − Q||². ``a`` [r, in] = Vh_r, ``b`` [out, r] = U_r·S_r. Shapes: W [out, in],
X [tokens, in]. Work in ``dtype`` (float64 for the stored branch; the smoothing search ranks candidates in
float32); ``randomized=True`` uses ``torch.svd_lowrank`` (seeded, other generators untouched), several times faster
on large layers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .quantizers import QTensor, dequantize, quantize

__all__ = ["LowRankResult", "low_rank_decompose", "top_r_svd"]


@dataclass
class LowRankResult:
    """``a`` [r, in], ``b`` [out, r] (float32), ``weight`` dequantized residual (shape/dtype of W), ``q`` its codes,
    ``errors`` the score of every iteration tried."""
    a: torch.Tensor
    b: torch.Tensor
    weight: torch.Tensor
    q: QTensor
    errors: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int):
    """Seed the one generator ``device`` draws from (svd_lowrank takes no generator) and restore it afterwards;
    no other device's generator is touched."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        yield


def top_r_svd(R: torch.Tensor, rank: int, randomized: bool = False, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors (a [r, in], b [out, r]) of R [out, in] in ``dtype`` (Eckart–Young)."""
    R = R.to(dtype)
    if rank <= 0:
        return R.new_zeros(0, R.shape[1]), R.new_zeros(R.shape[0], 0)
    if randomized and rank < min(R.shape) // 2:
        with _seeded(R.device, seed):
            U, S, V = torch.svd_lowrank(R, q=min(rank + 10, min(R.shape)), niter=4)
        return V[:, :rank].T.contiguous(), U[:, :rank] * S[:rank]
    U, S, Vh = torch.linalg.svd(R, full_matrices=False)
    return Vh[:rank].contiguous(), U[:, :rank] * S[:rank]


def _score(res: torch.Tensor, Q: torch.Tensor, X: torch.Tensor | None, Xq: torch.Tensor | None) -> float:
    """Output error of the quantized residual Q of ``res`` = W − L (see module docstring), summed in float64."""
    if X is None:
        return float((res - Q).pow(2).sum(dtype=torch.float64))
    return float((Xq @ Q.T - X @ res.T).pow(2).sum(dtype=torch.float64))


def low_rank_decompose(W: torch.Tensor, rank: int, dtype: str, group_size: int = -1, num_iters: int = 1,
                       X: torch.Tensor | None = None, randomized: bool = False, seed: int = 0,
                       scale_dtype: torch.dtype | None = None, Xq: torch.Tensor | None = None,
                       work_dtype: torch.dtype = torch.float64) -> LowRankResult:
    """Fit the branch and quantize the residual with RTN (GPTQ may re-quantize W − b·a afterwards)."""
    Wd = W.detach().to(work_dtype)
    if X is not None:
        X = X.to(work_dtype)
        Xq = X if Xq is None else Xq.to(work_dtype)
    Q = torch.zeros_like(Wd)
    best = None
    errors: list[float] = []
    for _ in range(max(num_iters, 1)):
        a, b = top_r_svd(Wd - Q, rank, randomized, seed, work_dtype)
        L = b @ a
        q = quantize(Wd - L, dtype, group_size, scale_dtype=scale_dtype)
        Q = dequantize(q, work_dtype)
        err = _score(Wd - L, Q, X, Xq)
        errors.append(err)
        if best is not None and err >= best[0]:
            break
        best = (err, a, b, q)
    _, a, b, q = best
    return LowRankResult(a.float(), b.float(), dequantize(q, W.dtype), q, errors)
