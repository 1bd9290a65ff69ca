"""Per-layer sensitivity: trials that replay the recorded float outputs of the blocks before the layer give exactly
what a full forward gives, and all three encoder outputs are scored."""
import torch

from sam2ptq_core.algorithms.metrics import sqnr_db
from sam2ptq_core.algorithms.quantizers import fake_quantize
from sam2ptq_core.algorithms.scheme import LayerScheme
from sam2ptq_core.sam2.loading import build_random, quantizable_linears
from sam2ptq_core.sam2.quantized_model import LayerArtifacts, swapped
from sam2ptq_core.sam2.sensitivity import LEVELS, layer_sensitivity
from tests.helpers import ARCH


def test_replayed_trials_equal_full_forwards_on_all_levels():
    """Measured: every level's SQNR and the block error equal a full forward's bit for bit (replayed blocks return
    the very tensors the float forward produced); the loss is the mean noise power of the three levels. blocks.0's
    mlp.proj_in (random weights): fpn0 38.5, fpn1 39.4, embedding 33.6 dB: three different numbers."""
    m = build_random("tiny", 0, 128, ARCH)
    lin = quantizable_linears(m)
    names = ["blocks.0.mlp.proj_in", "blocks.2.attn.qkv", "blocks.4.mlp.proj_out"]
    w4a4 = LayerScheme("sint4", -1, "sint4", -1)
    arts = {n: LayerArtifacts(w4a4, fake_quantize(lin[n].weight.detach(), "sint4", -1), lin[n].bias.detach(), None,
                              None, None) for n in names}
    g = torch.Generator().manual_seed(1)
    pixels = [torch.randn(1, 3, 128, 128, generator=g) for _ in range(2)]
    got = layer_sensitivity(m, arts, pixels)
    with torch.inference_mode():
        ref = [[e.float() for e in m.get_image_embeddings(px)] for px in pixels]
        for n in names:
            with swapped(m, n, arts[n]):
                q = [[e.float() for e in m.get_image_embeddings(px)] for px in pixels]
            want = {lv: sqnr_db(torch.cat([r[k].flatten() for r in ref]), torch.cat([x[k].flatten() for x in q]))
                    for k, lv in enumerate(LEVELS)}
            assert got[n]["sqnr_db"] == want, n
            assert got[n]["loss"] == sum(10 ** (-v / 10) for v in want.values()) / 3
            assert got[n]["embedding_sqnr_db"] == want["embedding"] and got[n]["block_rel_err"] > 0
    early = got["blocks.0.mlp.proj_in"]["sqnr_db"]
    assert len({round(v, 6) for v in early.values()}) == 3, early
