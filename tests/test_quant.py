import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sam2ptq_core.algorithms.quantizers import compute_qparams, dequantize, fake_quantize, qdtype, quantize
from tests.reference.naive import rtn

DTYPES = ["sint4", "uint4", "sint8", "uint8"]


def _x(seed, rows, k, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g) * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,group", [(96, 64), (112, 128), (144, 64), (128, 32), (50, -1), (96, 96)])
def test_fake_quantize_matches_elementwise_reference(dtype, k, group):
    x = _x(k + group, 7, k, 3.0)
    got = fake_quantize(x, dtype, group).double().numpy()
    ref = rtn(x.numpy(), dtype, group)
    # measured max |diff| 4.8e-7 (float32 vs float64 multiply of code·scale)
    assert np.abs(got - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


def test_keeps_shape_dtype_and_leading_dims():
    x = _x(0, 24, 96).reshape(2, 3, 4, 96).to(torch.bfloat16)
    y = fake_quantize(x, "sint4", 64)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    flat = fake_quantize(x.reshape(-1, 96), "sint4", 64)
    assert torch.equal(y.reshape(-1, 96), flat)


def test_ragged_group_does_not_change_other_groups():
    x = _x(1, 5, 96)
    full = fake_quantize(x, "uint4", 64)
    first = fake_quantize(x[:, :64], "uint4", 64)
    last = fake_quantize(x[:, 64:], "uint4", 64)
    assert torch.equal(full[:, :64], first) and torch.equal(full[:, 64:], last)
    assert torch.equal(fake_quantize(x, "sint8", 128), fake_quantize(x, "sint8", -1))


def test_worked_example():
    y = fake_quantize(torch.tensor([[0.7, -0.35, 0.1]]), "sint4")
    assert torch.allclose(y, torch.tensor([[0.7, -0.4, 0.1]]), atol=1e-7)


def test_all_zero_row_stays_zero():
    x = torch.zeros(3, 96)
    for d in DTYPES:
        assert torch.equal(fake_quantize(x, d, 64), x)


@given(seed=st.integers(0, 10_000), dtype=st.sampled_from(DTYPES), group=st.sampled_from([-1, 16, 64, 128]),
       k=st.sampled_from([16, 48, 96, 112, 144]), mag=st.floats(1e-3, 1e3))
def test_rtn_properties(seed, dtype, group, k, mag):
    x = _x(seed, 4, k, mag)
    q = quantize(x, dtype, group)
    qd = qdtype(dtype)
    assert int(q.codes.min()) >= qd.qmin and int(q.codes.max()) <= qd.qmax
    deq = dequantize(q)
    g = q.qparams.group_size
    scale = q.qparams.scale.repeat_interleave(g, dim=1)[:, :k]
    # inside the range, the error is at most half a step (+ float32 rounding)
    assert ((deq - x).abs() <= scale / 2 * (1 + 1e-5) + 1e-6 * mag).all()
    # requantizing with the same parameters recovers the codes exactly (what the exporters rely on)
    assert torch.equal(quantize(deq, dtype, group, qparams=q.qparams).codes, q.codes)
    if qd.signed:  # symmetric: the group absmax is on the grid, so requantization from scratch is idempotent
        assert torch.equal(fake_quantize(deq, dtype, group), deq)


def test_unsigned_zero_point_and_scale():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    qp = compute_qparams(x, "uint4")
    assert float(qp.zero) == 0.0 and abs(float(qp.scale) - 4 / 15) < 1e-7


def test_unknown_dtype_names_supported():
    with pytest.raises(ValueError, match="sint4"):
        fake_quantize(torch.ones(2, 2), "int3")
