"""Sequential calibration (``quant.calib.mode: sequential``): trunk block i is smoothed and quantized on the inputs
that the already quantized blocks 0..i-1 produce, as GPTQ's own code and the sequential pipelines of LLM tools do.

Memory stays flat in the number of calibration images. The hidden states between blocks are kept on local disk,
one file per calibration batch, and read and written one batch at a time. The device holds the model, one batch and
one block's statistics, fewer than the one-shot capture holds (every layer's at once). Disk holds the hidden states
of all images at one block boundary, twice while a block is applied (the largest boundary of large at 1024²:
256×256×144 values per image, 19 MB in bfloat16, 2.4 GB for 128 images).

Resume: every block is a stage of its own (``seq_block``), keyed by its index and by the key of the block before it.
A killed run resumes at the first block without a stage. The hidden states are rebuilt then by running the images
through the stored quantized blocks (one forward per block, no search); a fully reused run runs no forward at all.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..algorithms.layer_recipe import LayerSpec
from ..algorithms.model_recipe import quantize_and_report, search_all_smoothing, smoothing_record
from ..algorithms.rotation import Rotation
from ..algorithms.scheme import LayerScheme
from ..algorithms.statistics import LayerStats
from ..files import sweep_leftovers, writer_tag
from ..sam2.capture import block_stats, trunk_input
from ..sam2.loading import quantizable_linears, trunk
from ..sam2.quantized_model import artifacts_from_saved, quantize_model

_log = logging.getLogger(__name__)

__all__ = ["SequentialCalibrator", "quantize_block"]


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


def quantize_block(layers: dict[str, nn.Module], stats: dict[str, LayerStats], rots: dict[str, Rotation | None],
                   spec: LayerSpec | dict[str, LayerSpec], candidates: list[tuple[float, float]], smoothing: bool,
                   auto_rotate: bool, device, groups=()) -> dict:
    """Smoothing search, branch + GPTQ and errors for one block's layers (the one-shot per-layer functions)."""
    searched = smoothing or any(r is not None for r in rots.values())
    found = search_all_smoothing(layers, stats, rots, spec, candidates, auto_rotate=auto_rotate,
                                 device=device, groups=groups) if searched else {}
    scales, rotated, log = smoothing_record(found)
    scales = scales if smoothing else {}
    chosen = {k: (rots.get(k) if k in rotated else None) for k in layers}
    saved, rows, fallbacks = quantize_and_report(layers, stats, scales, chosen, spec, device=device, groups=groups)
    return {"smooth": scales, "qlayers": saved, "rotated": rotated, "log": log, "layers": rows,
            "fallbacks": fallbacks}


def run_blocks(c, refs: dict, progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Every trunk block as a ``seq_block`` stage (reused where stored, built in order otherwise); returns the
    blocks' Refs. ``refs``: fetch_model, build_calibration_set and rotate."""
    from ..algorithms.smoothing import smooth_candidates
    from ..sam2.images import normalize
    from ..schemes import calibration_schemes
    from .runtime import layer_groups, layer_rots, layer_specs, load_fp_model, to_run_dtype
    from .stages import STAGES, local_dir, open_artifact, run_stage

    stage = STAGES["seq_block"]
    q = c.quant
    model = to_run_dtype(load_fp_model(c, open_artifact(c, refs["fetch_model"])).model, c)
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    images = open_artifact(c, refs["build_calibration_set"]).images()
    bs = q.calib.batch_size

    def pixels():
        for i in range(0, images.shape[0], bs):
            yield normalize(images[i:i + bs]).to(dev, dt)
    proj, rot = (q.smooth.proj if q.smooth else None), q.rotation
    # formats fixed before calibration, mixed precision's fallbacks included (quant.mixed.layers)
    schemes = calibration_schemes(q, quantizable_linears(model, q.skip))
    cands = smooth_candidates(proj.strategy, proj.alpha, proj.beta, proj.num_grids) if proj else [(0.0, 0.0)]
    by_width = open_artifact(c, refs["rotate"]).matrices()
    rotation = {"random": bool(rot and rot.random), "seed": c.seed}
    tmp_root = local_dir(c) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    for gone in sweep_leftovers(tmp_root):  # hidden states of a killed run of this machine (GBs for large)
        _log.info("removed %s, left by a sequential run that was killed", gone)
    work = tmp_root / f".sequential.tmp-{writer_tag()}"  # named by its writer, so the next run can sweep it
    work.mkdir()
    cal = SequentialCalibrator(model, pixels, work, q.calib.sample_tokens, c.seed, q.skip, schemes)
    out, previous, n = [], None, len(trunk(model).blocks)
    upstream = {k: refs[k] for k in stage.upstream}
    try:
        for i in range(n):
            # float (fp16 fallback) layers are not quantized: the walk runs them in float
            layers = {k: v for k, v in quantizable_linears(model, q.skip).items()
                      if k.split(".")[1] == str(i) and schemes[k].quantized}
            fb = {k for k in layers if schemes[k].fallback}

            def build(tmp, i=i, layers=layers, previous=previous, fb=fb):
                sch = {k: schemes[k] for k in layers}
                r = quantize_block(layers, cal.stats(i), layer_rots(layers, by_width, sch), layer_specs(q, c.seed, sch),
                                   cands, proj is not None, bool(rot and rot.mode == "auto"), dev,
                                   [g for g in layer_groups(q, layers) if not set(g) & fb])
                stage.artifact.write(tmp, {"smooth": r["smooth"], "qlayers": r["qlayers"]},
                                     {"block": i, **{k: r[k] for k in ("rotated", "log", "layers", "fallbacks")}})
                return {"block": i, "num_layers": len(layers), "previous": previous}
            ref = run_stage(stage, c, upstream, build, key_extra=lambda i=i, p=previous: {"block": i, "previous": p})
            art = open_artifact(c, ref)
            t, info = art.tensors(), art.info()
            cal.quantized(i, t["qlayers"], t["smooth"], {**rotation, "layers": info["rotated"]})
            out.append(ref)
            previous = ref["key"]
            if progress:
                progress(i + 1, n, f"block {i}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _blocks(c, keys: list[str]):
    from .stages import open_artifact
    return [open_artifact(c, {"stage": "seq_block", "key": k}) for k in keys]


def assemble_smoothing(c, keys: list[str]) -> tuple[dict, list[str], dict]:
    """The smooth stage's (scales, rotated layers, search log) from the blocks' stages."""
    scales, rotated, log = {}, [], {}
    for art in _blocks(c, keys):
        info = art.info()
        scales.update(art.tensors()["smooth"])
        rotated += info["rotated"]
        log.update(info["log"])
    return scales, rotated, log


def assemble_layers(c, keys: list[str]) -> tuple[dict, dict]:
    """The GPTQ stage's (saved layers, {"layers": error rows, "fallbacks"}) from the blocks' stages."""
    qlayers, rows, fallbacks = {}, [], {}
    for art in _blocks(c, keys):
        info = art.info()
        qlayers.update(art.tensors()["qlayers"])
        rows += info["layers"]
        fallbacks.update(info["fallbacks"])
    return qlayers, {"layers": rows, "fallbacks": fallbacks}
