"""The float prompt encoder + mask decoder of a transformers ``Sam2Model`` as the SAM2 apps' ``decoder.onnx``
(``onnx_interface``: names, order, shapes), exported with torch's dynamo exporter, N prompts and P points dynamic.

Nothing of SAM2 is restated: the module calls the model's own ``prompt_encoder`` (points + the padding point,
labels 2/3 as box corners, -1 as not-a-point, all its ``_embed_points``), ``prompt_encoder.mask_embed`` /
``no_mask_embed`` for the mask prompt (blended by ``has_mask_input``, as the reference export does) and
``mask_decoder`` with ``multimask_output=True``, so its output is ``Sam2Model.forward(image_embeddings=…,
multimask_output=True)``'s ``pred_masks`` / ``iou_scores`` with the N prompts as the batch (the image features
broadcast to N).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .onnx_graph import export_module
from .onnx_interface import DECODER_INPUTS, DECODER_OUTPUTS

__all__ = ["PromptDecoder", "export_decoder"]


class PromptDecoder(nn.Module):
    """``Sam2Model`` → the decoder interface: (image_embed [1, C, h, w], high_res_feats_0, high_res_feats_1,
    point_coords [N, P, 2] float (the S frame), point_labels [N, P] float, mask_input [N, 1, 4h, 4w],
    has_mask_input [N]) → (masks [N, 3, 4h, 4w] logits, iou_predictions [N, 3])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input):
        m, n = self.model, point_coords.shape[0]
        pe = m.prompt_encoder
        sparse, _ = pe(point_coords[:, None], point_labels.to(torch.int64)[:, None], None, None)  # [N, 1, P+1, C]
        has = has_mask_input.view(-1, 1, 1, 1)
        dense = has * pe.mask_embed(mask_input) + (1 - has) * pe.no_mask_embed.weight.view(1, -1, 1, 1)
        feats = [f.expand(n, -1, -1, -1) for f in (image_embed, high_res_feats_0, high_res_feats_1)]
        image_pe = m.get_image_wide_positional_embeddings().expand(n, -1, -1, -1)
        masks, iou, _, _ = m.mask_decoder(image_embeddings=feats[0], image_positional_embeddings=image_pe,
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=True, high_resolution_features=feats[1:])
        return masks[:, 0], iou[:, 0]


def example_inputs(model: nn.Module, image_size: int, n: int = 2, p: int = 3) -> tuple[torch.Tensor, ...]:
    """Decoder inputs of the right shapes for ``model`` at ``image_size`` (zeros, points inside the image)."""
    c = model.config.mask_decoder_config.hidden_size
    s = image_size
    emb = (torch.zeros(1, c, s // 16, s // 16), torch.zeros(1, c // 8, s // 4, s // 4),
           torch.zeros(1, c // 4, s // 8, s // 8))
    coords = torch.full((n, p, 2), s / 2)
    return (*emb, coords, torch.ones(n, p), torch.zeros(n, 1, s // 4, s // 4), torch.zeros(n))


def export_decoder(path: Path, model: nn.Module, image_size: int, metadata: dict[str, str] | None = None) -> dict:
    """Write ``path``: ``PromptDecoder(model)`` (float32) with N and P dynamic. Returns {"bytes"}."""
    from torch.export import Dim
    n, p = Dim("num_labels", min=1, max=1024), Dim("num_points", min=1, max=1024)
    dyn = (None, None, None, {0: n, 1: p}, {0: n, 1: p}, {0: n}, {0: n})
    dec = PromptDecoder(model.float().eval())
    export_module(path, dec, example_inputs(model, image_size), DECODER_INPUTS, DECODER_OUTPUTS, metadata,
                  dynamic_shapes=dyn)
    return {"bytes": path.stat().st_size}
