"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Minimises the layer's proxy loss tr((W − Q) H (W − Q)ᵀ), H = E[xᵀx], by quantizing one input column at a time and
spreading its error onto the not-yet-quantized columns through the upper Cholesky factor U of H⁻¹ (Alg. 1):

    for column j:  q_j = Q(w_j);  e = (w_j − q_j) / U_jj;  w_{j+1:} −= e · U_{j, j+1:}

Columns are processed in blocks of ``block_size`` with lazy updates of the columns after the block.

Worked 2×2 example (one output row): W = [1.0, 0.45], H = [[1, .5], [.5, 1]], grid step 1 (qmax·scale).
H⁻¹ = [[4/3, −2/3], [−2/3, 4/3]], U = chol_upper(H⁻¹) = [[1.1547, −0.5774], [0, 1]].
q_0 = 1, e = 0;  w_1 = 0.45 → q_1 = 0: loss 0.2025.  Had w_0 been 0.6 → q_0 = 1, e = −0.4/1.1547 = −0.3464,
w_1 −= e · (−0.5774) → 0.45 − 0.2 = 0.25 → q_1 = 0, which accounts for the error already made in column 0.

Shapes: W [out, in], H [in, in]. Math runs in float32 (float64 when W is float64), on W's device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .quantizers import QTensor, compute_qparams, dequantize, expand_groups, qdtype, quantize, quantize_with

__all__ = ["GPTQResult", "gptq_quantize", "proxy_loss"]

log = logging.getLogger(__name__)


@dataclass
class GPTQResult:
    """``weight`` dequantized (shape/dtype of W); ``q`` codes + parameters; ``damp`` the damping that worked;
    ``fallback`` a message when GPTQ fell back to RTN (else None); ``dead`` indices of dead input channels."""
    weight: torch.Tensor
    q: QTensor
    damp: float
    fallback: str | None
    dead: torch.Tensor

    @property
    def codes(self) -> torch.Tensor:
        return self.q.codes

    @property
    def scales(self) -> torch.Tensor:
        return self.q.qparams.scale

    @property
    def zeros(self) -> torch.Tensor | None:
        return self.q.qparams.zero


def proxy_loss(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W − Q) H (W − Q)ᵀ) in float64."""
    d = (W - Q).double()
    return float(torch.einsum("oi,ij,oj->", d, H.double(), d))


def _inverse_cholesky(H: torch.Tensor, damp: float, step: float, tries: int) -> tuple[torch.Tensor | None, float]:
    """Upper Cholesky factor of (H + damp·I)⁻¹, adding ``step`` more damping after each failure."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(max(tries, 1)):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                return U, damp
        damp += step
    return None, damp


def _sweep(W: torch.Tensor, U: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, qd,
           block_size: int) -> torch.Tensor:
    """The blocked column sweep of Alg. 1; W is updated in place, returns the dequantized Q."""
    n_in = W.shape[1]
    Q = torch.zeros_like(W)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], U1[i, i]
            s = scale[:, i1 + i]
            z = None if zero is None else zero[:, i1 + i]
            c = quantize_with(w, s, z, qd)
            q = (c - z) * s if z is not None else c * s
            Q[:, i1 + i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, dtype: str, group_size: int = -1, block_size: int = 128,
                  damp_percentage: float = 0.01, num_inv_tries: int = 250, act_order: bool = False,
                  scale_dtype: torch.dtype | None = None) -> GPTQResult:
    """Quantize W [out, in] with Hessian H [in, in] (any positive multiple of E[xᵀx]).

    Dead input channels (H_ii = 0) get H_ii = 1 and a zero weight column. Group scales are fixed from the (dead-
    zeroed) weight before the sweep. Damping = damp_percentage · mean(diag H); each failed Cholesky adds another
    0.1 · that amount, up to ``num_inv_tries`` tries, then RTN is used and ``fallback`` says so (also logged).
    With ``act_order`` columns are swept by decreasing H_ii; every column keeps the group of its original index.
    ``scale_dtype`` rounds the group scales to a 16-bit dtype (see quantizers.compute_qparams).
    """
    qd = qdtype(dtype)
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    Wf = W.detach().to(work).clone()
    Hf = H.detach().to(device=W.device, dtype=work).clone()
    dead = torch.nonzero(torch.diagonal(Hf) == 0).squeeze(1)
    Hf[dead, dead] = 1.0
    Wf[:, dead] = 0.0
    qp = compute_qparams(Wf, dtype, group_size, scale_dtype)
    n_in = Wf.shape[1]
    scale = expand_groups(qp.scale.to(work), qp.group_size, n_in)
    zero = None if qp.zero is None else expand_groups(qp.zero.to(work), qp.group_size, n_in)
    base = damp_percentage * float(torch.diagonal(Hf).mean())
    perm = torch.argsort(torch.diagonal(Hf), descending=True) if act_order else None
    if perm is not None:
        Wf, Hf = Wf[:, perm], Hf[perm][:, perm]
        scale = scale[:, perm]
        zero = None if zero is None else zero[:, perm]
    U, damp = _inverse_cholesky(Hf, base, 0.1 * base, num_inv_tries)
    fallback = None
    if U is None:
        fallback = (f"Cholesky of H failed after {num_inv_tries} tries (damping up to {damp:.3g}); used RTN. "
                    f"Raise kernel_gptq.damp_percentage or num_inv_tries, or calibrate on more tokens.")
        log.warning(fallback)
        c = quantize_with(Wf, scale, zero, qd)
        Qw = (c - zero) * scale if zero is not None else c * scale
    else:
        Qw = _sweep(Wf, U, scale, zero, qd, block_size)
    if perm is not None:
        Qw = Qw[:, torch.argsort(perm)]
    q = quantize(Qw, dtype, qparams=qp)  # Q lies on the grid, so this recovers the codes exactly
    return GPTQResult(dequantize(q, W.dtype), q, damp, fallback, dead)

