"""Sequential calibration's model side: the calibration images walked through the trunk block by block, each block
run quantized once its layers are, with the hidden states between blocks on local disk (one file per calibration
batch, read and written one batch at a time, so memory stays flat in the number of images). Disk holds the hidden
states of all images at one block boundary, twice while a block is applied (the largest boundary of large at 1024²:
256×256×144 values per image, 19 MB in bfloat16, 2.4 GB for 128 images). ``pipeline/sequential.py`` makes each block
a stage.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..algorithms.scheme import LayerScheme
from ..algorithms.statistics import LayerStats
from .capture import block_stats, trunk_input
from .loading import trunk
from .quantized_model import artifacts_from_saved, quantize_model

__all__ = ["SequentialCalibrator"]


class SequentialCalibrator:
    """Walks the trunk block by block. ``stats(i)`` gives block i's statistics on the quantized prefix's outputs;
    ``quantized(i, qlayers, smooth, rotation)`` records block i's result, applied to the hidden states only when a
    later block needs them (each layer at its ``schemes`` entry). ``pixels()`` yields the normalised calibration
    batches on the model's device/dtype."""

    def __init__(self, model: nn.Module, pixels: Callable[[], Iterator[torch.Tensor]], work_dir: Path,
                 sample_tokens: int, seed: int, skip: list[str] | tuple, schemes: dict[str, LayerScheme]):
        self.model, self.pixels, self.work = model, pixels, Path(work_dir)
        self.sample_tokens, self.seed, self.skip = sample_tokens, seed, skip
        self.schemes = schemes
        self.blocks = trunk(model).blocks
        self.at: int | None = None  # the hidden states on disk are the input of this block (None: none yet)
        self.results: dict[int, tuple[dict, dict, dict]] = {}
        self.n_batches = 0

    def _files(self, tag: str) -> list[Path]:
        return [self.work / tag / f"{b:06d}.pt" for b in range(self.n_batches)]

    @torch.inference_mode()
    def _start(self) -> None:
        (self.work / "cur").mkdir(parents=True, exist_ok=True)
        n = 0
        for n, px in enumerate(self.pixels(), 1):
            torch.save(trunk_input(self.model, px), self.work / "cur" / f"{n - 1:06d}.pt")
        self.n_batches, self.at = n, 0

    def _inputs(self) -> Iterator[torch.Tensor]:
        dev = next(self.model.parameters()).device
        for f in self._files("cur"):
            yield torch.load(f, weights_only=True, map_location=dev)

    @torch.inference_mode()
    def _advance(self) -> None:
        """Quantize block ``at`` in the model and map every stored hidden state through it."""
        i = self.at
        qlayers, smooth, rotation = self.results.pop(i)
        if qlayers:
            quantize_model(self.model, artifacts_from_saved(qlayers, smooth, rotation, self.schemes))
        nxt = self.work / "next"
        nxt.mkdir(exist_ok=True)
        for f, h in zip(self._files("cur"), self._inputs()):
            torch.save(self.blocks[i](h), nxt / f.name)
        shutil.rmtree(self.work / "cur")
        nxt.rename(self.work / "cur")
        self.at = i + 1

    def stats(self, i: int) -> dict[str, LayerStats]:
        """Statistics of block i's quantized linears on the outputs of the quantized blocks 0..i-1."""
        if self.at is None:
            self._start()
        while self.at < i:
            if self.at not in self.results:
                raise RuntimeError(f"block {self.at} has no recorded result; record blocks in order")
            self._advance()
        if self.at != i:
            raise RuntimeError(f"the hidden states are past block {i} (at {self.at})")
        return block_stats(self.model, i, self._inputs(), self.sample_tokens, self.seed, self.skip)

    def quantized(self, i: int, qlayers: dict, smooth: dict, rotation: dict) -> None:
        self.results[i] = (qlayers, smooth, rotation)
