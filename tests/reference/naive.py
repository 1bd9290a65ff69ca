"""Naive float64 reference implementations, written for clarity, not speed, independently of sam2ptq_core."""
from __future__ import annotations

import numpy as np

RANGES = {"sint4": (-7, 7, True), "sint8": (-127, 127, True), "uint4": (0, 15, False), "uint8": (0, 255, False)}


def rtn_row(row: np.ndarray, dtype: str, group: int) -> np.ndarray:
    """Elementwise RTN of one row with ragged last group, float64."""
    qmin, qmax, signed = RANGES[dtype]
    k = len(row)
    g = k if group <= 0 or group >= k else group
    out = np.empty(k)
    for start in range(0, k, g):
        chunk = row[start:start + g]
        if signed:
            scale = np.float32(np.abs(chunk).max()) / np.float32(qmax)
            scale = float(scale) if scale > 0 else 1.0
            zero = 0.0
        else:
            lo, hi = min(chunk.min(), 0.0), max(chunk.max(), 0.0)
            scale = float((np.float32(hi) - np.float32(lo)) / np.float32(qmax))
            scale = scale if scale > 0 else 1.0
            zero = float(np.clip(np.round(-lo / scale), qmin, qmax))
        for i, v in enumerate(chunk):
            c = min(max(np.round(v / scale) + zero, qmin), qmax)
            out[start + i] = (c - zero) * scale
    return out


def rtn(x: np.ndarray, dtype: str, group: int) -> np.ndarray:
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return np.stack([rtn_row(r, dtype, group) for r in x2]).reshape(x.shape)


def gptq_columns(W: np.ndarray, H: np.ndarray, dtype: str, group: int, damp_percentage: float = 0.01,
                 act_order: bool = False) -> np.ndarray:
    """OBQ-style column loop in float64 with an explicit inverse Hessian, updated by Gaussian elimination after
    each column (Frantar et al., eq. 2–3), and group scales fixed from the original W. ``act_order``: columns are
    visited by decreasing H_ii (after the dead-column fix), each keeping the scale of its own original group."""
    qmin, qmax, signed = RANGES[dtype]
    W = W.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    n = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H = H + damp_percentage * np.mean(np.diag(H)) * np.eye(n)
    g = n if group <= 0 or group >= n else group
    scales = np.zeros_like(W)
    zeros = np.zeros_like(W)
    for r in range(W.shape[0]):
        for start in range(0, n, g):
            chunk = W[r, start:start + g]
            if signed:
                s = float(np.float32(np.abs(chunk).max()) / np.float32(qmax)) or 1.0
                z = 0.0
            else:
                lo, hi = min(chunk.min(), 0.0), max(chunk.max(), 0.0)
                s = float((np.float32(hi) - np.float32(lo)) / np.float32(qmax)) or 1.0
                z = float(np.clip(np.round(-lo / s), qmin, qmax))
            scales[r, start:start + g] = s
            zeros[r, start:start + g] = z
    Hinv = np.linalg.inv(H)
    Q = np.zeros_like(W)
    order = list(np.argsort(-np.diag(H), kind="stable")) if act_order else list(range(n))
    for i, j in enumerate(order):
        c = np.clip(np.round(W[:, j] / scales[:, j]) + zeros[:, j], qmin, qmax)
        Q[:, j] = (c - zeros[:, j]) * scales[:, j]
        err = (W[:, j] - Q[:, j]) / Hinv[j, j]
        rest = order[i + 1:]
        W[:, rest] -= np.outer(err, Hinv[j, rest])
        Hinv = Hinv - np.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return Q


def svd_branch(W: np.ndarray, rank: int) -> np.ndarray:
    """Best rank-r approximation b·a of W (float64)."""
    U, S, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    return (U[:, :rank] * S[:rank]) @ Vt[:rank]
