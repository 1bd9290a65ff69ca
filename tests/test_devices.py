"""The per-layer stages take their device from the config: every tensor they create lives on that device, and
what they hand to the store is on the CPU. On CUDA (gpu mark) this is the real check; on the CPU it runs the same
code path so that a stray ``.cuda()`` or ``.cpu()`` inside the recipe shows up here too."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sam2ptq_core.algorithms.model_recipe import (
    all_layer_errors,
    layer_rotations,
    quantize_all,
    saved_layers,
    search_all_smoothing,
)
from sam2ptq_core.algorithms.rotation import Rotation
from sam2ptq_core.algorithms.statistics import StatsAccumulator
from sam2ptq_core.config import load_config
from sam2ptq_core.schemes import layer_spec
from tests.helpers import REDUCED_CFG


class DeviceAudit(TorchDispatchMode):
    """Records the device of every tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.devices = set()
        self.by_op: dict[str, set[str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
                self.by_op.setdefault(func.__name__.split(".")[0], set()).add(t.device.type)
        return out


def _layers():
    g = torch.Generator().manual_seed(0)
    layers, stats = {}, {}
    for i, (n_in, n_out) in enumerate([(96, 288), (192, 96)]):
        lin = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n_out, n_in, generator=g) * 0.05)
        acc = StatsAccumulator(n_in, 256, seed=i)
        x = torch.randn(512, n_in, generator=g)
        x[:, :3] *= 20  # outlier channels
        acc.add(x)
        layers[f"l{i}"], stats[f"l{i}"] = lin, acc.result()
    return layers, stats


HEAVY = ("mm", "addmm", "bmm", "matmul", "linalg", "cholesky", "svd", "triangular_solve", "round", "clamp")


def _audit_ops(device: str) -> dict[str, set[str]]:
    cfg = load_config(REDUCED_CFG, ["quant.smooth.proj.num_grids=3"])
    spec = layer_spec(cfg.quant, cfg.seed)
    layers, stats = _layers()
    rots = layer_rotations(layers, {n: Rotation(n) for n in (96, 192)})
    with DeviceAudit() as audit:
        res = search_all_smoothing(layers, stats, rots, spec, [(0.5, 0.0), (0.3, 0.2)], auto_rotate=True,
                                   device=device)
        scales = {k: r.scale for k, (r, _) in res.items()}
        lqs = quantize_all(layers, stats, scales, rots, spec, device=device)
        all_layer_errors(layers, stats, lqs, scales, rots, spec, device=device)
    return audit.by_op


def _audit(device: str) -> set[str]:
    cfg = load_config(REDUCED_CFG, ["quant.smooth.proj.num_grids=3"])
    spec = layer_spec(cfg.quant, cfg.seed)
    layers, stats = _layers()
    by_width = {n: Rotation(n) for n in (96, 192)}
    rots = layer_rotations(layers, by_width)
    with DeviceAudit() as audit:
        res = search_all_smoothing(layers, stats, rots, spec, [(0.5, 0.0), (0.3, 0.2)], auto_rotate=True,
                                   device=device)
        scales = {k: r.scale for k, (r, _) in res.items()}
        lqs = quantize_all(layers, stats, scales, rots, spec, device=device)
        rows = all_layer_errors(layers, stats, lqs, scales, rots, spec, device=device)
    saved = saved_layers(lqs, layers, spec, scales)
    assert all(t.device.type == "cpu" for d in saved.values() for t in d.values())
    assert all(r.scale.device.type == "cpu" for r, _ in res.values())
    assert all(0 <= r["output_rel_err"] < 1 for r in rows)
    return audit.devices


def test_per_layer_stages_stay_on_the_cpu_when_told():
    assert _audit("cpu") == {"cpu"}


@pytest.mark.gpu
def test_per_layer_stages_run_on_cuda():
    by_op = _audit_ops("cuda")
    # the inputs are moved once per layer (those copies are CPU→CUDA) and results are handed back to the store, but
    # every matrix product, factorization, rounding and clamp runs on the GPU
    heavy = {op: devs for op, devs in by_op.items() if any(h in op for h in HEAVY)}
    assert heavy and all(devs == {"cuda"} for devs in heavy.values()), heavy
