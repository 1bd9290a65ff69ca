"""Typed stage artifacts: each class alone knows its stage's file names and how to write and read them.

An artifact wraps a finished stage (a ``Manifest`` from the store); each file is sha256-checked (and, from an object
store, downloaded) when a reader first asks for it. Readers load lazily, one file at a time, so a stage that needs
only ``sources.json`` never loads (nor checks, nor downloads) ``images.pt``. ``write(tmp_dir, *objects)`` (one object
per file of ``FILES``) is called by the stage's build function on the temporary directory. Tensors are saved with
``torch.save`` and read with ``torch.load(..., weights_only=True)``; everything else is JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from .store import Manifest

__all__ = ["Artifact", "FetchedModel", "CalibrationSet", "ActivationStats", "RotationSpec", "SmoothingChoice",
           "QuantizedLayers", "BlockQuant", "Sensitivity", "MixedChoice", "shipped_layers", "StaticRanges",
           "OnnxExport", "OnnxRuntime", "Evaluation"]


def _write(d: Path, files: dict[str, Any]) -> None:
    """Write each object to its file: ``.pt`` with torch.save, ``.json`` as JSON."""
    for name, obj in files.items():
        if name.endswith(".pt"):
            import torch
            torch.save(obj, d / name)
        else:
            (d / name).write_text(json.dumps(obj, indent=1))


class Artifact:
    """A finished stage's files. ``FILES``: the files every build writes (a stage may add more, e.g. overlays)."""
    FILES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    @classmethod
    def write(cls, d: Path, *objs: Any) -> None:
        """Write one object per file of ``FILES``, in order, into the stage's temp directory ``d``."""
        if len(objs) != len(cls.FILES):
            raise TypeError(f"{cls.__name__}.write takes {len(cls.FILES)} objects ({', '.join(cls.FILES)})")
        _write(d, dict(zip(cls.FILES, objs)))

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def meta(self) -> dict:
        return self.manifest.meta

    def files(self) -> list[Path]:
        """Every file of the stage (as listed by the manifest), each verified (fetched) now."""
        return [self.manifest.path(n) for n in sorted(self.manifest.data.get("files", {}))]

    def _json(self, name: str) -> Any:
        return json.loads(self.manifest.path(name).read_text())

    def _pt(self, name: str) -> Any:
        """Memory-mapped (copy-on-write): pages are read as they are used, so host memory does not grow with the
        size of images.pt or acts.pt (about 4 GB for large)."""
        import torch
        return torch.load(self.manifest.path(name), weights_only=True, mmap=True)


class FetchedModel(Artifact):
    """Which weights the run uses: source, local path, random or not, and their sha256 (the model itself is
    reloaded from there and checked against the hash)."""
    FILES = ("model.json",)

    def info(self) -> dict:
        return self._json("model.json")


class CalibrationSet(Artifact):
    """Resized uint8 calibration images [N, 3, S, S] and where each came from (path, size, sha256, original hw)."""
    FILES = ("images.pt", "sources.json")

    def images(self):
        return self._pt("images.pt")

    def sources(self) -> list[dict]:
        return self._json("sources.json")


class ActivationStats(Artifact):
    """Per-layer input statistics of the float encoder (absmax, Σ XᵀX, a token reservoir)."""
    FILES = ("acts.pt",)

    @classmethod
    def write(cls, d: Path, stats: dict) -> None:
        """``stats``: {layer: LayerStats}."""
        super().write(d, {k: v.to_dict() for k, v in stats.items()})

    def stats(self) -> dict:
        from ..algorithms.statistics import LayerStats
        return {k: LayerStats.from_dict(v) for k, v in self._pt("acts.pt").items()}

    def widths(self) -> list[int]:
        return list(self.meta["widths"].values())


class RotationSpec(Artifact):
    """The Hadamard rotation of every input width: how to rebuild each matrix and its sha256."""
    FILES = ("rotation.json",)

    def spec(self) -> dict:
        return self._json("rotation.json")

    def matrices(self) -> dict:
        from ..algorithms.model_recipe import rotation_matrices
        return rotation_matrices(self.spec())


class SmoothingChoice(Artifact):
    """Per-layer smoothing scales, which layers keep the rotation, and the search log."""
    FILES = ("smooth.pt", "rotation_choice.json", "search_log.json")

    def scales(self) -> dict:
        return self._pt("smooth.pt")

    def rotation_choice(self) -> dict:
        """{"random", "seed", "layers": [names of the rotated layers]}."""
        return self._json("rotation_choice.json")


class QuantizedLayers(Artifact):
    """Per layer: dequantized residual weight, int codes, scale, zero, bias and the low-rank branch; plus the
    per-layer error table and GPTQ fallbacks."""
    FILES = ("qlayers.pt", "layers.json")

    def qlayers(self) -> dict:
        return self._pt("qlayers.pt")

    def layer_report(self) -> dict:
        """{"layers": [{name, weight_rel_err, output_rel_err}], "fallbacks": {layer: message}}."""
        return self._json("layers.json")


class BlockQuant(Artifact):
    """Sequential mode, one trunk block: its layers' smoothing scales and quantized layers (``block.pt``), which
    layers keep the rotation, the search log, per-layer errors and GPTQ fallbacks (``block.json``)."""
    FILES = ("block.pt", "block.json")

    def tensors(self) -> dict:
        """{"smooth": {layer: scale}, "qlayers": {layer: saved layer dict}}."""
        return self._pt("block.pt")

    def info(self) -> dict:
        """{"block", "rotated": [layers], "log": {layer: search log}, "layers": [error rows], "fallbacks"}."""
        return self._json("block.json")


class Sensitivity(Artifact):
    """Per layer, that layer alone quantized at the target precision: embedding SQNR, block output error and its
    weight parameters (``{"layers": {}}`` without ``quant.mixed``)."""
    FILES = ("sensitivity.json",)

    def layers(self) -> dict:
        return self._json("sensitivity.json")["layers"]


class MixedChoice(Artifact):
    """Which layers fall back and to what (``mixed.json``), the re-quantized w8a8 fallback layers (``fallback.pt``;
    empty for fp16 and without mixed), and the scheme of every layer the run ships (``scheme.json``: the rules and
    each layer's resolved ``LayerScheme``, written with or without ``quant.mixed``)."""
    FILES = ("fallback.pt", "mixed.json", "scheme.json")

    def choice(self) -> dict:
        """{"fallback": "w8a8" | "fp16" | None, "layers": [...], "avg_weight_bits", "order": [...]}."""
        return self._json("mixed.json")

    def fallback_layers(self) -> dict:
        return self._pt("fallback.pt")

    def schemes(self) -> dict:
        """{layer: LayerScheme} of every quantizable layer (a float fallback's ``quantized`` is False)."""
        from ..schemes import read_schemes
        return read_schemes(self._json("scheme.json"))

    def scheme_file(self) -> Path:
        """``scheme.json`` itself (export copies it into the output tree)."""
        return self.manifest.path("scheme.json")


def shipped_layers(gptq: QuantizedLayers, mixed: MixedChoice) -> tuple[dict, dict]:
    """(saved layers, {layer: LayerScheme}) of the quantized layers a run ships: the GPTQ stage's, with mixed
    precision's w8a8 fallbacks swapped in and its float ones left out (they stay float)."""
    schemes = mixed.schemes()
    q = {k: v for k, v in gptq.qlayers().items() if schemes[k].quantized}
    q.update(mixed.fallback_layers())
    return q, {k: schemes[k] for k in q}


class StaticRanges(Artifact):
    """``ranges.json``: each layer's static activation range as observed on the quantized model (lo, hi: what the
    observer saw; scale, zero: the uint8 parameters chosen, ``qdq.static_qparams``) and how it was chosen;
    ``enabled`` false when neither ``quant.ipts.static`` nor ``onnx`` needs them."""
    FILES = ("ranges.json",)

    def info(self) -> dict:
        return self._json("ranges.json")

    def qparams(self) -> dict:
        """{layer: QParams} (uint8 per tensor) for ``build_quantized`` / ``onnx_graph.runtime_model``."""
        from ..algorithms.qdq import ranges_qparams
        return ranges_qparams(self.info())

    def ranges_file(self) -> Path:
        return self.manifest.path("ranges.json")


class OnnxExport(Artifact):
    """``onnx.json`` (formats, layers, sizes, metadata; ``enabled`` false without ``onnx``), the SAM2 apps' pair
    (export/onnx_interface.py): ``encoder.onnx`` (the quantized encoder as int8 QDQ, export/onnx_graph.py) and
    ``decoder.onnx`` (the float prompt encoder + mask decoder, export/onnx_decoder.py), and ``float.onnx`` (the
    float encoder, the latency baseline). What the files are, not how they ran: that is ``OnnxRuntime``."""
    FILES = ("onnx.json",)

    def info(self) -> dict:
        return self._json("onnx.json")

    def encoder_file(self) -> Path:
        return self.manifest.path("encoder.onnx")

    def decoder_file(self) -> Path:
        return self.manifest.path("decoder.onnx")

    def float_file(self) -> Path:
        return self.manifest.path("float.onnx")


class OnnxRuntime(Artifact):
    """``runtime.json``: the ONNX file on one runtime, version and machine: its ``onnx.json`` record, SQNR against
    float / fake quant / its static twin, latency of the float file and ours and of torch fp32, and ``heldout``
    (the report's real-kernel row: encoder SQNR and masks on the held-out images); ``enabled`` false without
    ``onnx``."""
    FILES = ("runtime.json",)

    def info(self) -> dict:
        return self._json("runtime.json")


class VideoEvaluation(Artifact):
    """``video.json`` (J&F of the quantized tracker against the float one, per object and frame, and both
    trackers' per-frame times; ``enabled`` false without ``quant.eval.video``), with it ``video_strip.png`` and
    ``video_jf.png`` (copied into the output tree by export)."""
    FILES = ("video.json",)

    @classmethod
    def write(cls, d: Path, metrics: dict, strip: dict | None = None, title: str = "") -> None:
        from ..export.video_report import write_video_files
        write_video_files(d, metrics, strip, title)

    def metrics(self) -> dict:
        return self._json("video.json")


class Evaluation(Artifact):
    """metrics.json, report.md and the report's pictures (copied into the output tree by export)."""
    FILES = ("metrics.json", "report.md")

    @classmethod
    def write(cls, d: Path, metrics: dict, overlays: list[dict], ious: dict) -> None:
        from ..export.report import write_report
        write_report(d, metrics, overlays, ious)

    def metrics(self) -> dict:
        return self._json("metrics.json")
