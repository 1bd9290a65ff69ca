"""low_rank.exclusive: false — layers reading the same input share one down-projection, bit for bit."""
import torch

from sam2ptq_core.algorithms.layer_recipe import LayerSpec
from sam2ptq_core.algorithms.model_recipe import quantize_all, search_all_smoothing
from sam2ptq_core.algorithms.statistics import StatsAccumulator
from sam2ptq_core.sam2.variants import shared_input_groups


def test_groups_are_the_transition_blocks_qkv_and_proj():
    names = ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.proj", "blocks.1.attn.proj",
             "blocks.3.proj"]
    assert shared_input_groups(names) == [("blocks.1.attn.qkv", "blocks.1.proj")]


def test_shared_down_projection_is_bit_identical_and_fits_both():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 64, generator=g) * torch.linspace(0.2, 4, 64)
    layers = {"blocks.1.attn.qkv": torch.nn.Linear(64, 96), "blocks.1.proj": torch.nn.Linear(64, 128)}
    acc = StatsAccumulator(64, 512, seed=1)
    acc.add(x)
    stats = {k: acc.result() for k in layers}
    spec = LayerSpec(w_dtype="sint4", w_group=32, a_dtype="sint8", a_group=-1, rank=8, lowrank_iters=3,
                     block_size=16)
    group = [("blocks.1.attn.qkv", "blocks.1.proj")]
    found = search_all_smoothing(layers, stats, {k: None for k in layers}, spec, [(0.5, 0.5), (0.3, 0.7)],
                                 groups=group)
    s = {k: r.scale for k, (r, _) in found.items()}
    assert torch.equal(s["blocks.1.attn.qkv"], s["blocks.1.proj"])  # smoothed together: one scale
    shared = quantize_all(layers, stats, s, {k: None for k in layers}, spec, groups=group)
    own = quantize_all(layers, stats, s, {k: None for k in layers}, spec)
    a1, a2 = shared["blocks.1.attn.qkv"].a, shared["blocks.1.proj"].a
    assert a1.shape == (8, 64) and torch.equal(a1, a2)
    assert not torch.equal(own["blocks.1.attn.qkv"].a, own["blocks.1.proj"].a)
    for k, lin in layers.items():  # each layer's effective weight still approximates its own weight
        lq = shared[k]
        assert lq.b.shape == (lin.out_features, 8) and lq.q.codes.shape == lin.weight.shape
        w_eff = (lq.weight.double() + lq.b.double() @ lq.a.double()) / s[k].double()
        w = lin.weight.detach().double()
        rel = float((w_eff - w).norm() / w.norm())
        own_eff = (own[k].weight.double() + own[k].b.double() @ own[k].a.double()) / s[k].double()
        rel_own = float((own_eff - w).norm() / w.norm())
        assert rel < 1.5 * rel_own, (k, rel, rel_own)  # sharing costs little
