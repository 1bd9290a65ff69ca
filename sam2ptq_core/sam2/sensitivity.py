"""Per-layer sensitivity: each quantized linear alone at the target precision, the rest of the encoder in float.

For every layer the calibration images run through the encoder with only that layer swapped for its QuantLinear;
the effect is measured where it lands first (the relative error of its block's output) and where the mask decoder
reads it (the SQNR of the image embedding against the float one). One float forward per image gives the
references; then one forward per layer and image.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..algorithms.metrics import sqnr_db
from .loading import trunk
from .quantized_model import LayerArtifacts, swapped

__all__ = ["layer_sensitivity"]


@torch.inference_mode()
def layer_sensitivity(model: nn.Module, arts: dict[str, LayerArtifacts], pixels: list[torch.Tensor],
                      a_dtype: str | None, a_group: int, progress: Callable[[int, int, str], None] | None = None
                      ) -> dict[str, dict]:
    """{layer: {"embedding_sqnr_db", "block_rel_err"}} over ``pixels`` (batches on the model's device/dtype)."""
    blocks = trunk(model).blocks
    seen: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i, b in enumerate(blocks)]
    try:
        ref_emb, ref_blocks = [], []
        for px in pixels:
            seen.clear()
            ref_emb.append(model.get_image_embeddings(px)[-1].float())
            ref_blocks.append(dict(seen))
        out = {}
        for n, (name, art) in enumerate(arts.items()):
            bi = int(name.split(".")[1])
            err_num = err_den = 0.0
            emb_ref, emb_q = [], []
            with swapped(model, name, art, a_dtype, a_group):
                for px, e_ref, b_ref in zip(pixels, ref_emb, ref_blocks):
                    seen.clear()
                    emb_q.append(model.get_image_embeddings(px)[-1].float())
                    emb_ref.append(e_ref)
                    r, q = b_ref[bi].double(), seen[bi].double()
                    err_num += float((q - r).pow(2).sum())
                    err_den += float(r.pow(2).sum())
            out[name] = {"embedding_sqnr_db": sqnr_db(torch.cat([e.flatten() for e in emb_ref]),
                                                      torch.cat([e.flatten() for e in emb_q])),
                         "block_rel_err": (err_num / max(err_den, 1e-30)) ** 0.5}
            if progress:
                progress(n + 1, len(arts), name)
    finally:
        for h in hooks:
            h.remove()
    return out
