"""Per-layer sensitivity: each quantized linear alone at the target precision, the rest of the encoder in float.

For every layer the calibration images run through the encoder with only that layer swapped for its QuantLinear;
the effect is measured where it lands first (the relative error of its block's output) and where the mask decoder
reads it: all three encoder outputs (the two high-resolution FPN maps the decoder's upscaling reads, which the early
Hiera stages feed, and the image embedding), as SQNR against the float ones. One float forward per image records
every block's output; a trial for a layer of block i then starts at block i: blocks 0..i-1 replay their recorded
outputs (nothing before the layer changes), so late layers cost a fraction of a full forward.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from ..algorithms.metrics import sqnr_db
from .loading import trunk
from .quantized_model import LayerArtifacts, swapped

__all__ = ["layer_sensitivity", "LEVELS"]

LEVELS = ("fpn0", "fpn1", "embedding")  # get_image_embeddings' order: high → low resolution


class _Replay(nn.Module):
    """Stands in for a block whose output is already known for the current image."""

    def __init__(self):
        super().__init__()
        self.output: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.output


@contextmanager
def _replaying(blocks: nn.ModuleList, upto: int):
    """Blocks 0..upto-1 replaced by replays (set their ``output`` per image), restored afterwards."""
    saved = [blocks[j] for j in range(upto)]
    replays = [_Replay() for _ in range(upto)]
    for j, r in enumerate(replays):
        blocks[j] = r
    try:
        yield replays
    finally:
        for j, m in enumerate(saved):
            blocks[j] = m


@torch.inference_mode()
def layer_sensitivity(model: nn.Module, arts: dict[str, LayerArtifacts], pixels: list[torch.Tensor],
                      progress: Callable[[int, int, str], None] | None = None
                      ) -> dict[str, dict]:
    """{layer: {"sqnr_db": {fpn0, fpn1, embedding}, "embedding_sqnr_db", "loss", "block_rel_err"}} over ``pixels``
    (batches on the model's device/dtype). ``loss`` is the mean over the three levels of the noise-to-signal
    power 10^(−SQNR/10)."""
    blocks = trunk(model).blocks
    seen: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i, b in enumerate(blocks)]
    try:
        ref_levels, ref_blocks = [], []
        for px in pixels:
            seen.clear()
            ref_levels.append([e.float() for e in model.get_image_embeddings(px)])
            ref_blocks.append(dict(seen))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, (name, art) in enumerate(arts.items()):
        bi = int(name.split(".")[1])
        got_block: list[torch.Tensor] = []
        hook = blocks[bi].register_forward_hook(lambda m, a, o, keep=got_block: keep.append(o))
        err_num = err_den = 0.0
        got_levels = []
        try:
            with swapped(model, name, art), _replaying(blocks, bi) as replays:
                for px, b_ref in zip(pixels, ref_blocks):
                    for j, r in enumerate(replays):
                        r.output = b_ref[j]
                    got_block.clear()
                    got_levels.append([e.float() for e in model.get_image_embeddings(px)])
                    r_, q_ = b_ref[bi].double(), got_block[0].double()
                    err_num += float((q_ - r_).pow(2).sum())
                    err_den += float(r_.pow(2).sum())
        finally:
            hook.remove()
        sq = {lv: sqnr_db(torch.cat([e[k].flatten() for e in ref_levels]),
                          torch.cat([e[k].flatten() for e in got_levels])) for k, lv in enumerate(LEVELS)}
        out[name] = {"sqnr_db": sq, "embedding_sqnr_db": sq["embedding"],
                     "loss": sum(10 ** (-min(v, 300.0) / 10) for v in sq.values()) / len(sq),
                     "block_rel_err": (err_num / max(err_den, 1e-30)) ** 0.5}
        if progress:
            progress(n + 1, len(arts), name)
    return out
