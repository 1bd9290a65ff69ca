"""Streaming capture of linear-input statistics with forward hooks; no activation is kept.

Windowed attention pads each block's input with zero rows up to a multiple of the window size (≈16 % of the rows at
stage 3 of tiny/small/base-plus at 1024²). Those rows are not real tokens, so they are masked out: ``attn.qkv`` sees the
windows of the block input, ``attn.proj`` the windows of the (query-pooled) output. The mask is computed from the
block's spatial size with transformers' own ``window_partition``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers.models.sam2.modeling_sam2 import window_partition

from ..algorithms.statistics import LayerStats, StatsAccumulator
from .loading import quantizable_linears, trunk

__all__ = ["capture_stats", "block_stats", "trunk_input", "valid_rows"]


def valid_rows(batch: int, height: int, width: int, window: int, device=None) -> torch.Tensor:
    """Bool [rows] marking the real tokens after window partition of a [batch, height, width, C] map."""
    ones = torch.ones(batch, height, width, 1, device=device)
    if window <= 0:
        return ones.reshape(-1) > 0
    win, _ = window_partition(ones, window)
    return win.reshape(-1) > 0


def _row_mask(block: nn.Module, leaf: str, b: int, h: int, w: int, device) -> torch.Tensor | None:
    ws = block.window_size
    if ws <= 0 or leaf not in ("attn.qkv", "attn.proj"):
        return None
    if leaf == "attn.qkv":
        return valid_rows(b, h, w, ws, device)
    if block.query_stride:  # attn.proj sees the pooled windows
        sh, sw = block.query_stride
        return valid_rows(b, h // sh, w // sw, ws // sh, device)
    return valid_rows(b, h, w, ws, device)


def _accumulators(model: nn.Module, layers: dict[str, nn.Module], sample_tokens: int, seed: int,
                  skip: list[str] | tuple) -> dict[str, StatsAccumulator]:
    """One accumulator per layer, seeded by the layer's position among the model's quantized linears, so a layer's
    token sample is drawn the same way whether it is captured with the whole encoder or block by block."""
    order = {n: i for i, n in enumerate(quantizable_linears(model, skip))}
    return {name: StatsAccumulator(mod.in_features, sample_tokens, seed + order[name],
                                   device=next(mod.parameters()).device) for name, mod in layers.items()}


def _attach(model: nn.Module, layers: dict[str, nn.Module], accs: dict[str, StatsAccumulator]) -> list:
    """Forward pre-hooks feeding each layer's real input rows (window padding masked) to its accumulator."""
    blocks = trunk(model).blocks
    spatial: dict[int, tuple[int, int, int]] = {}
    handles = []
    rows: dict[tuple, torch.Tensor | None] = {}  # indices of the real rows, once per block, layer kind and shape

    def real_rows(bi: int, leaf: str, device) -> torch.Tensor | None:
        key = (bi, leaf, spatial[bi], device)
        if key not in rows:
            mask = _row_mask(blocks[bi], leaf, *spatial[bi], device)
            rows[key] = None if mask is None else torch.nonzero(mask).squeeze(1)
        return rows[key]

    for bi in sorted({int(n.split(".")[1]) for n in layers}):
        handles.append(blocks[bi].register_forward_pre_hook(
            lambda m, args, bi=bi: spatial.__setitem__(bi, tuple(args[0].shape[:3]))))
    for name, mod in layers.items():
        bi = int(name.split(".")[1])
        leaf = name.split(".", 2)[2]

        def hook(m, args, name=name, bi=bi, leaf=leaf):
            x = args[0]
            x2 = x.reshape(-1, x.shape[-1])
            idx = real_rows(bi, leaf, x.device)
            accs[name].add(x2 if idx is None else x2.index_select(0, idx))
        handles.append(mod.register_forward_pre_hook(hook))
    return handles


@torch.inference_mode()
def capture_stats(model: nn.Module, batches: Iterable[torch.Tensor], sample_tokens: int, seed: int,
                  skip: list[str] | tuple = (), on_batch: Callable[[int], None] | None = None
                  ) -> dict[str, LayerStats]:
    """Run the vision encoder over ``batches`` (normalised pixels [B, 3, S, S] on the model's device/dtype) and
    return per-layer statistics. ``on_batch(i)`` is called after each batch (progress)."""
    layers = quantizable_linears(model, skip)
    accs = _accumulators(model, layers, sample_tokens, seed, skip)
    handles = _attach(model, layers, accs)
    enc = getattr(model, "vision_encoder", model)
    try:
        for i, px in enumerate(batches):
            enc(pixel_values=px)
            if on_batch:
                on_batch(i)
    finally:
        for h in handles:
            h.remove()
    return {name: acc.result() for name, acc in accs.items()}


@torch.inference_mode()
def block_stats(model: nn.Module, block_index: int, inputs: Iterable[torch.Tensor], sample_tokens: int, seed: int,
                skip: list[str] | tuple = ()) -> dict[str, LayerStats]:
    """Statistics of the quantized linears of trunk block ``block_index``, run on its ``inputs`` (the hidden states
    [B, H, W, C] that the blocks before it produce), with the same seeds and masking as ``capture_stats``."""
    layers = {k: v for k, v in quantizable_linears(model, skip).items() if k.split(".")[1] == str(block_index)}
    accs = _accumulators(model, layers, sample_tokens, seed, skip)
    handles = _attach(model, layers, accs)
    block = trunk(model).blocks[block_index]
    try:
        for h in inputs:
            block(h)
    finally:
        for hd in handles:
            hd.remove()
    return {name: acc.result() for name, acc in accs.items()}


@torch.inference_mode()
def trunk_input(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The input of the first trunk block: patch embedding plus position embedding (as Sam2HieraDetModel does)."""
    t = trunk(model)
    h = t.patch_embed(pixels)
    return h + t._get_pos_embed(h.shape[1:3])
