"""Orthogonal Hadamard rotations for the widths SAM2 uses.

An orthogonal R leaves a linear layer unchanged, x·Wᵀ = (x·R)(W·R)ᵀ, while spreading activation outliers over all
channels (QuaRot, Ashkboos et al. 2024). We use normalised Hadamard matrices H_n/√n (H·Hᵀ = I) built as Kronecker
products of Sylvester's H_2^m and Paley-construction matrices of order 12 (Paley I, q = 11), 20 (Paley I, q = 19)
and 28 (Paley II, q = 13). That covers n = k·2^m with k ∈ {1, 12, 20, 28, 144, 240, 336, 400, 560, 784} — every
Hiera width: 96 = 12·8, 112 = 28·4, 144 = 144·1, 288 = 144·2, 576 = 144·4, 1152 = 144·8, 4608 = 144·32, …

``random=True`` multiplies the rows by a seeded ±1 diagonal D: R = D·H/√n, still orthogonal.
"""
from __future__ import annotations

import math
from functools import cache, lru_cache

import torch

__all__ = ["hadamard", "apply_hadamard", "hadamard_factors", "random_signs", "Rotation"]


def _legendre(q: int) -> list[int]:
    """χ(a) for a in 0..q−1 (q prime): 0, +1 for quadratic residues, −1 otherwise."""
    squares = {(i * i) % q for i in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _jacobsthal(q: int) -> torch.Tensor:
    chi = _legendre(q)
    return torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)


def _paley1(q: int) -> torch.Tensor:
    """Order q+1 for prime q ≡ 3 (mod 4): H = I + S, S = [[0, 1ᵀ], [−1, Q]] skew-symmetric."""
    n = q + 1
    S = torch.zeros(n, n, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + S


def _paley2(q: int) -> torch.Tensor:
    """Order 2(q+1) for prime q ≡ 1 (mod 4): C = [[0, 1ᵀ], [1, Q]] symmetric conference matrix,
    H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]]."""
    n = q + 1
    C = torch.zeros(n, n, dtype=torch.float64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(C, a) + torch.kron(torch.eye(n, dtype=torch.float64), b)


_BASES = {12: lambda: _paley1(11), 20: lambda: _paley1(19), 28: lambda: _paley2(13)}


@cache
def _base(k: int) -> torch.Tensor:
    return _BASES[k]()


def hadamard_factors(n: int) -> tuple[list[int], int]:
    """Split n into Paley base orders (at most two) and a power of two 2^m. Raises ValueError when impossible."""
    candidates = [[]] + [[k] for k in _BASES] + [[a, b] for a in _BASES for b in _BASES if a <= b]
    for bases in candidates:
        k = math.prod(bases) if bases else 1
        if n % k == 0 and (n // k) & (n // k - 1) == 0 and n // k >= 1:
            return bases, n // k
    raise ValueError(f"no Hadamard matrix of order {n}: supported orders are k·2^m with k in "
                     f"{{1, 12, 20, 28}} or a product of two of 12/20/28; disable quant.rotation for this width")


def random_signs(n: int, seed: int) -> torch.Tensor:
    """Seeded ±1 vector of length n (float64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).double() * 2 - 1


def hadamard(n: int, *, random: bool = False, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthogonal [n, n] Hadamard matrix; deterministic entries are ±1/√n. Built in float64, cast to ``dtype``."""
    bases, p2 = hadamard_factors(n)
    H = torch.ones(1, 1, dtype=torch.float64)
    for k in bases:
        H = torch.kron(H, _base(k))
    m = int(round(math.log2(p2)))
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range(m):
        H = torch.kron(H, h2)
    H = H / math.sqrt(n)
    if random:
        H = random_signs(n, seed)[:, None] * H
    return H.to(dtype)


@lru_cache(maxsize=256)
def _factors(n: int, random: bool, seed: int, transpose: bool, device: torch.device, dtype: torch.dtype):
    """(signs or None, Kronecker product of the Paley bases (transposed for x·Rᵀ) or None, H_{2^m}/√n) of order n,
    built once per width, device and dtype rather than on every forward."""
    bases, p2 = hadamard_factors(n)
    signs = random_signs(n, seed).to(device=device, dtype=dtype) if random else None
    B = None
    if bases:
        B = torch.ones(1, 1, dtype=torch.float64)
        for b in bases:
            B = torch.kron(B, _base(b))
        B = (B if transpose else B.T).contiguous().to(device=device, dtype=dtype)
    H = hadamard(p2) * math.sqrt(p2 / n)  # symmetric ±1/√n entries: the whole normalisation in one factor
    return signs, B, H.to(device=device, dtype=dtype)


def apply_hadamard(x: torch.Tensor, *, random: bool = False, seed: int = 0, transpose: bool = False) -> torch.Tensor:
    """x·R (or x·Rᵀ) for R = hadamard(n, random, seed), n = x.shape[-1], as two small matrix products per row,
    O(n·(k + 2^m)) instead of one dense n×n product.

    x viewed as X [..., k, 2^m] (k = product of the Paley bases): x·R = vec(Bᵀ·X·H_{2^m})/√n (Kronecker identity).
    Paley I matrices are not symmetric, so x·Rᵀ uses B (and applies the ±1 signs after instead of before). This is
    the one implementation of the rotation: calibration, QuantLinear and the ONNX export (two MatMuls) all run it.
    16-bit inputs are transformed in float32 and rounded once.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # in 16-bit the transform alone adds 5e-4 / 4e-3 relative error
        return apply_hadamard(x.float(), random=random, seed=seed, transpose=transpose).to(x.dtype)
    n = x.shape[-1]
    signs, Bt, H = _factors(n, random, seed, transpose, x.device, x.dtype)
    if signs is not None and not transpose:
        x = x * signs
    shape = x.shape
    y = x.reshape(*shape[:-1], n // H.shape[0], H.shape[0]) @ H
    if Bt is not None:
        y = Bt @ y
    y = y.reshape(shape)
    return y * signs if signs is not None and transpose else y


class Rotation:
    """R = hadamard(n, random, seed) applied by the fast transform: ``apply(x)`` = x·R, ``apply_t(x)`` = x·Rᵀ."""

    def __init__(self, n: int, random: bool = False, seed: int = 0):
        hadamard_factors(n)  # fail early, naming n
        self.n, self.random, self.seed = n, random, seed

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return apply_hadamard(x, random=self.random, seed=self.seed)

    def apply_t(self, x: torch.Tensor) -> torch.Tensor:
        return apply_hadamard(x, random=self.random, seed=self.seed, transpose=True)

    def matrix(self) -> torch.Tensor:
        return hadamard(self.n, random=self.random, seed=self.seed)
