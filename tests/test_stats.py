import torch

from sam2ptq_core.algorithms.rotation import Rotation
from sam2ptq_core.algorithms.statistics import StatsAccumulator, transform_stats


def _x(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.linspace(0.1, 20, k)


def test_chunked_equals_one_shot_and_float64_reference():
    x = _x(50_000, 64)
    one = StatsAccumulator(64, reservoir_size=256, seed=3)
    one.add(x)
    chunked = StatsAccumulator(64, reservoir_size=256, seed=3)
    for part in torch.split(x, [1, 999, 7000, 12000, 30000]):
        chunked.add(part)
    a, b = one.result(), chunked.result()
    ref = x.double().T @ x.double()
    rel = lambda h: float((h - ref).norm() / ref.norm())  # noqa: E731
    # measured: one-shot 2.6e-8, chunked 2.6e-8 relative to the float64 reference
    assert rel(a.hessian_sum) < 1e-6 and rel(b.hessian_sum) < 1e-6
    assert float((a.hessian_sum - b.hessian_sum).norm() / ref.norm()) < 1e-6
    assert a.n_tokens == b.n_tokens == 50_000
    assert torch.equal(a.absmax, b.absmax) and torch.equal(a.absmax, x.abs().amax(0))
    # the reservoir draws one random number per token, so chunking does not change it
    assert torch.equal(a.sample, b.sample)


def test_reservoir_is_uniform_and_seeded():
    n, k = 2000, 400  # fp16 holds integers ≤ 2048 exactly
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    acc = StatsAccumulator(2, reservoir_size=k, seed=1)
    for part in torch.split(x, 333):
        acc.add(part)
    ids = acc.result().sample[:, 0].float()
    assert len(torch.unique(ids)) == k
    # uniform over 0..1999: mean ≈ 999.5 ± 29 (sd of the mean)
    assert abs(float(ids.mean()) - (n - 1) / 2) < 4 * 577 / k ** 0.5
    acc2 = StatsAccumulator(2, reservoir_size=k, seed=2)
    acc2.add(x)
    assert not torch.equal(acc2.result().sample, acc.result().sample)


def test_transform_stats_is_exact():
    x = _x(3000, 96)
    acc = StatsAccumulator(96, reservoir_size=3000)
    acc.add(x)
    s = torch.rand(96, generator=torch.Generator().manual_seed(0)) + 0.5
    R = Rotation(96, random=True, seed=2)
    t = transform_stats(acc.result(), s, R)
    xt = (x.double() @ R.matrix()) / s.double()
    ref = xt.T @ xt
    # measured 2.9e-8 relative
    assert float((t.hessian_sum - ref).norm() / ref.norm()) < 1e-6


def test_reservoir_equals_sequential_algorithm_r():
    """The vectorised reservoir equals the token-by-token Algorithm R fed the same random draws."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 8, generator=g) for n in (100, 37, 500, 3)]
    k, seed = 64, 5
    acc = StatsAccumulator(8, reservoir_size=k, seed=seed)
    for b in batches:
        acc.add(b)
    draws = torch.Generator().manual_seed(seed)
    ref, t = torch.zeros(k, 8, dtype=torch.float16), 0
    for b in batches:
        u = torch.rand(b.shape[0], generator=draws, dtype=torch.float64)
        for i in range(b.shape[0]):
            j = int(torch.floor(u[i] * (t + 1)))
            if t < k:
                ref[t] = b[i].half()
            elif j < k:
                ref[j] = b[i].half()
            t += 1
    assert torch.equal(acc.result().sample, ref)
