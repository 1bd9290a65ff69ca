import copy

import torch

from sam2ptq_core.algorithms.rotation import Rotation
from sam2ptq_core.algorithms.scheme import LayerScheme
from sam2ptq_core.sam2.capture import capture_stats, valid_rows
from sam2ptq_core.sam2.loading import build_random, quantizable_linears
from sam2ptq_core.sam2.quantized_model import LayerArtifacts, QuantLinear, quantize_model
from tests.helpers import ARCH


def _model():
    return build_random("tiny", 0, 128, ARCH)


def test_valid_rows_counts_padding():
    v = valid_rows(1, 64, 64, 14)  # stage 3 of tiny at 1024²: 64×64 padded to 70×70
    assert v.numel() == 70 * 70 and int(v.sum()) == 64 * 64  # 16.4 % padded rows


def test_capture_matches_stored_inputs_and_drops_padding():
    m = _model()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(1, 3, 128, 128, generator=g) for _ in range(2)]
    # reference: store the actual inputs of a windowed qkv (block 4: 8×8 map, window 14 → 14×14 padded windows)
    # and of a global-attention qkv (block 3), and the stage-transition proj
    seen = {}
    layers = quantizable_linears(m)
    hooks = [layers[n].register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0].clone()))
             for n in ("blocks.4.attn.qkv", "blocks.3.attn.qkv", "blocks.1.proj")]
    with torch.inference_mode():
        for b in batches:
            m.vision_encoder(pixel_values=b)
    for h in hooks:
        h.remove()
    stats = capture_stats(m, batches, sample_tokens=64, seed=0)
    for name in ("blocks.3.attn.qkv", "blocks.1.proj"):
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[name]]).double()
        ref = x.T @ x
        assert stats[name].n_tokens == x.shape[0]
        assert float((stats[name].hessian_sum - ref).norm() / ref.norm()) < 1e-6  # measured 3e-8
    padded = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["blocks.4.attn.qkv"]])
    real = padded[padded.abs().sum(1) > 0]
    assert padded.shape[0] == 2 * 14 * 14 and stats["blocks.4.attn.qkv"].n_tokens == 2 * 8 * 8 == real.shape[0]
    ref = real.double().T @ real.double()
    assert float((stats["blocks.4.attn.qkv"].hessian_sum - ref).norm() / ref.norm()) < 1e-6
    # attn.proj of block 4 sees the query-pooled 4×4 map in 7×7 padded windows: 16 real rows of 49 per image
    assert stats["blocks.4.attn.proj"].n_tokens == 2 * 4 * 4


def test_quant_linear_transforms_are_exact_without_quantization():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(96, 40).double()
    x = torch.randn(5, 7, 96, generator=g, dtype=torch.float64)
    s = torch.rand(96, generator=g, dtype=torch.float64) + 0.5
    R = Rotation(96, random=True, seed=3)
    from sam2ptq_core.algorithms.layer_recipe import transform_weight
    Wt = transform_weight(lin.weight.detach(), s, R)  # (W·R)·diag(s), the order QuantLinear must invert
    a = torch.randn(4, 96, generator=g, dtype=torch.float64)
    b = torch.randn(40, 4, generator=g, dtype=torch.float64)
    art = LayerArtifacts(LayerScheme("sint4"), Wt - b @ a, lin.bias.detach(), s, a, b, rotate=True, rotate_random=True,
                         rotate_seed=3)  # float activations: nothing is quantized in the forward
    q = QuantLinear(art).double()
    err = float((q(x) - lin(x)).detach().abs().max())
    assert err < 1e-12, err  # measured 2e-15: smoothing, rotation and the branch preserve the layer exactly


def test_quantize_model_swaps_and_changes_output():
    m = _model()
    layers = quantizable_linears(m)
    def arts(a_dtype):
        return {n: LayerArtifacts(LayerScheme("sint8", -1, a_dtype, -1), lin.weight.detach().clone(),
                                  lin.bias.detach().clone(), None, None, None) for n, lin in layers.items()}
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = m.get_image_embeddings(x)
        same = quantize_model(copy.deepcopy(m), arts(None)).get_image_embeddings(x)
        q8 = quantize_model(copy.deepcopy(m), arts("sint8"))
        out8 = q8.get_image_embeddings(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, same))
    assert not all(torch.equal(a, b) for a, b in zip(ref, out8))
    assert sum(isinstance(mod, QuantLinear) for mod in q8.modules()) == len(layers)
