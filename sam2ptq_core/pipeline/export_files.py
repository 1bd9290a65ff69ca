"""The model files of the output tree, from the stage artifacts: the DeepCompressor-style cache files, the
optional nunchaku safetensors and ONNX encoder, the per-layer schemes and the resolved config."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..config import RunConfig
from . import artifacts as A
from .runtime import load_fp_model

__all__ = ["write_model_files"]


def write_model_files(d: Path, c: RunConfig, fetched: A.FetchedModel, smooth: A.SmoothingChoice,
                      gptq: A.QuantizedLayers, mixed: A.MixedChoice, ranges: A.StaticRanges,
                      onnx: A.OnnxExport) -> None:
    """The cache files, nunchaku's files (``convert_nunchaku``), ``scheme.json`` (every layer's scheme, as the
    mixed stage resolved it; the readers take formats from it) and ``config.yaml``; with mixed precision the
    config records the chosen fallback layers as ``quant.mixed.layers``, so it reproduces the choice."""
    from ..export.cache_files import write_cache_files
    fp = load_fp_model(c, fetched)
    (qlayers, schemes), scales = A.shipped_layers(gptq, mixed), smooth.scales()
    ch = mixed.choice()
    write_cache_files(d / "cache", fp.model.state_dict(), qlayers, schemes, scales, smooth.rotation_choice(),
                      whole_model=c.save_model)
    if c.convert_nunchaku:
        from ..export.nunchaku import write_nunchaku
        write_nunchaku(d / "nunchaku", c, fp.model, qlayers, scales, mixed.schemes())
    shutil.copyfile(mixed.scheme_file(), d / "scheme.json")
    if ranges.info()["enabled"]:  # static activation parameters (the reader needs them for a static run)
        shutil.copyfile(ranges.ranges_file(), d / "ranges.json")
    if onnx.info()["enabled"]:  # the ONNX encoder and what it measured (not the float baseline it was timed with)
        (d / "onnx").mkdir()
        for f in onnx.files():
            if f.name != "float.onnx":
                shutil.copyfile(f, d / "onnx" / f.name)
    cfg = c.model_dump(mode="json")
    if ch.get("fallback"):
        # the choice itself, so a reader rebuilds these fallbacks (none chosen: num_layers 0, still one valid policy)
        cfg["quant"]["mixed"].update(layers=ch["layers"], budget_bits=None,
                                     num_layers=None if ch["layers"] else 0)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
