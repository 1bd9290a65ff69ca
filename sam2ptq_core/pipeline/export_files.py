"""The model files of the output tree, from the stage artifacts: the DeepCompressor-style cache files, the
optional nunchaku safetensors and ONNX encoder, the per-layer schemes and the resolved config."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from ..config import RunConfig
from . import artifacts as A
from .stage_inputs import load_fp_model

__all__ = ["write_model_files", "write_evaluation_files"]


def write_model_files(d: Path, c: RunConfig, fetched: A.FetchedModel, smooth: A.SmoothingChoice,
                      gptq: A.QuantizedLayers, mixed: A.MixedChoice, ranges: A.StaticRanges,
                      onnx: A.OnnxExport, onnx_rt: A.OnnxRuntime) -> None:
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
    if onnx.info()["enabled"]:  # the ONNX pair and what it measured (not the float baseline it was timed with)
        _write_onnx(d / "onnx", c.model.name, onnx, onnx_rt)
    cfg = c.model_dump(mode="json")
    if ch.get("fallback"):
        # the choice itself, so a reader rebuilds these fallbacks (none chosen: num_layers 0, still one valid policy)
        cfg["quant"]["mixed"].update(layers=ch["layers"], budget_bits=None,
                                     num_layers=None if ch["layers"] else 0)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _write_onnx(d: Path, model_name: str, onnx: A.OnnxExport, onnx_rt: A.OnnxRuntime) -> None:
    """``onnx/``: the SAM2 apps' pair under their published names, X-AnyLabeling's config and README.md beside
    them (``export/onnx_interface.py``), and ``onnx.json``: the files' record and where they ran (predict reads
    precision_setting)."""
    from ..export.onnx_interface import pair_names, write_pair_extras
    from ..export.onnx_video import write_video_encoder
    d.mkdir()
    names = pair_names(model_name)
    shutil.copyfile(onnx.encoder_file(), d / names["encoder"])
    shutil.copyfile(onnx.decoder_file(), d / names["decoder"])
    write_video_encoder(d / names["encoder"], d / names["video_encoder"],
                        {"component": "video_encoder (quantized): the raw FPN levels Sam2VideoModel reads"})
    info = {**onnx.info(), **onnx_rt.info(), "files": names}
    write_pair_extras(d, model_name, info)
    (d / "onnx.json").write_text(json.dumps(info, indent=1, allow_nan=True))


def write_evaluation_files(d: Path, evaluation: A.Evaluation, onnx_rt: A.OnnxRuntime, video: A.VideoEvaluation,
                           guard: str = "") -> None:
    """``metrics.json`` and ``report.md``: the evaluate stage's, with the ONNX file's row on the runtime
    (``metrics["runtime"]``, the report's "Real kernels" section) when there is one, the video tracking
    (``metrics["video"]`` without the per-frame lists, which stay in the stage's video.json; the report's "Video"
    section) when ``quant.eval.video`` asked for it, and the regression guard's line under the report's first
    line."""
    from ..export.report import with_runtime
    from ..export.video_report import with_video
    metrics = evaluation.metrics()
    report = evaluation.manifest.path("report.md").read_text()
    rt = onnx_rt.info()
    if rt["enabled"]:
        metrics["runtime"] = rt["heldout"]
        report = with_runtime(report, metrics)
    v = video.metrics()
    if v["enabled"]:
        report = with_video(report, v)
        metrics["video"] = {k: val for k, val in v.items() if k not in ("J", "F")}
        for t in ("float", "quantized"):
            metrics["video"][t] = {k: val for k, val in v[t].items() if k != "frames"}
    if guard:
        first, *rest = report.split("\n")
        report = "\n".join([first, "", f"**Regression guard:** {guard}", *rest])
    (d / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True))
    (d / "report.md").write_text(report)
