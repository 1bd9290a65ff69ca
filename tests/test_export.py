"""Export formats: packing against naive element-wise references, and round trips through the files."""
import numpy as np
import pytest
import torch

from sam2ptq_core.export.nunchaku import (
    pack_lowrank,
    pack_scale,
    pack_weight,
    unpack_lowrank,
    unpack_scale,
    unpack_weight,
)


def _codes(n, k, seed=0):
    return torch.randint(-8, 8, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int16)


def naive_pack_weight(codes: np.ndarray) -> np.ndarray:
    """Element by element from the documented layout: n = ((nt·8 + np)·2 + nps)·8 + nl; k = kt·64 + (kps·4 + kl)·8 + rk;
    int32 word index in (nt, kt, np, nl, kl, nps, kps) order, nibble rk (lowest k in the low bits), little-endian."""
    n, k = codes.shape
    kt_n = k // 64
    out = np.zeros(n * k // 2, dtype=np.uint8)
    for nn in range(n):
        nt, r = divmod(nn, 128)
        np_, r = divmod(r, 16)
        nps, nl = divmod(r, 8)
        for kk in range(k):
            kt, r = divmod(kk, 64)
            kps, r = divmod(r, 32)
            kl, rk = divmod(r, 8)
            word = (((((nt * kt_n + kt) * 8 + np_) * 8 + nl) * 4 + kl) * 2 + nps) * 2 + kps
            byte = word * 4 + rk // 2
            nib = int(codes[nn, kk]) & 0xF
            out[byte] |= nib << (4 * (rk % 2))
    return out.view(np.int8).reshape(n, k // 2)


def naive_pack_scale(s: np.ndarray) -> np.ndarray:
    n, g = s.shape
    out = np.zeros(n * g, dtype=s.dtype)
    for nn in range(n):
        nt, r = divmod(nn, 128)
        a2, r = divmod(r, 16)
        a3, r = divmod(r, 8)
        a4, a5 = divmod(r, 2)
        for gg in range(g):
            out[(((((nt * g + gg) * 8 + a2) * 4 + a4) * 2 + a3) * 2 + a5)] = s[nn, gg]
    return out.reshape(g, n)


def naive_pack_lowrank(w: np.ndarray, down: bool) -> np.ndarray:
    """down: w [r, c] → [c, r]; up: w [c, r] → [c, r]; fragment (c/16, r/16) then (nl, kl, np, kp, h)."""
    if down:
        r, c = w.shape
        get = lambda ci, ri: w[ri, ci]  # noqa: E731
    else:
        c, r = w.shape
        get = lambda ci, ri: w[ci, ri]  # noqa: E731
    out = np.zeros(c * r, dtype=w.dtype)
    rf_n = r // 16
    for ci in range(c):
        for ri in range(r):
            # the 16-wide "n" side of a fragment is r for down and c for up
            (nside, kside) = (ri, ci) if down else (ci, ri)
            nf, nin = divmod(nside, 16)
            kf, kin = divmod(kside, 16)
            cf, rf = (kf, nf) if down else (nf, kf)
            np_, nl = divmod(nin, 8)
            kp, r2 = divmod(kin, 8)
            kl, h = divmod(r2, 2)
            out[((((((cf * rf_n + rf) * 8 + nl) * 4 + kl) * 2 + np_) * 2 + kp) * 2 + h)] = get(ci, ri)
    return out.reshape(c, r)


def test_weight_packing_matches_naive_layout_and_round_trips():
    codes = _codes(256, 128)
    got = pack_weight(codes)
    assert got.dtype == torch.int8 and got.shape == (256, 64)
    assert np.array_equal(got.numpy(), naive_pack_weight(codes.numpy()))
    assert torch.equal(unpack_weight(got), codes)


def test_scale_packing_matches_naive_layout_and_round_trips():
    s = torch.randn(256, 3, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = pack_scale(s)
    assert got.shape == (3, 256)
    assert np.array_equal(got.float().numpy(), naive_pack_scale(s.float().numpy()))
    assert torch.equal(unpack_scale(got, 256), s)
    # lane 0 holds channels {0, 1, 8, 9}: the order the notes document
    assert pack_scale(torch.arange(128.0)[:, None]).view(-1)[:8].tolist() == [0, 1, 8, 9, 2, 3, 10, 11]


@pytest.mark.parametrize("down", [True, False])
def test_lowrank_packing_matches_naive_layout_and_round_trips(down):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    if not down:
        w = w.T.contiguous()  # up: [N, r]
    got = pack_lowrank(w, down)
    assert np.array_equal(got.float().numpy(), naive_pack_lowrank(w.float().numpy(), down))
    assert torch.equal(unpack_lowrank(got, down), w)
