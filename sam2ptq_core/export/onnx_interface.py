"""The SAM2 ONNX encoder/decoder pair as SAM2 apps load it (no torch): the tensor names and order of the interface
introduced by ONNX-SAM2-Segment-Anything and kept by samexporter (AnyLabeling, X-AnyLabeling, OpenCV's SAM2 tests),
the files' names in the output tree, the X-AnyLabeling model config beside them and the tree's ``onnx/README.md``.

    encoder  image [1, 3, S, S] float32 (RGB stretched to S², /255, ImageNet mean/std)
             → high_res_feats_0 [1, 32, S/4, S/4], high_res_feats_1 [1, 64, S/8, S/8], image_embed [1, 256, S/16, S/16]
    decoder  image_embed, high_res_feats_0, high_res_feats_1, point_coords [N, P, 2] (the S frame),
             point_labels [N, P] (1 positive, 0 negative, 2/3 box corners, -1 padding), mask_input [N, 1, S/4, S/4],
             has_mask_input [N] → masks [N, 3, S/4, S/4] (low-resolution logits), iou_predictions [N, 3]

Apps bind by position and read S from the encoder's ``inputs[0].shape[2:]`` (1024 for a real SAM2; the reduced test
models use smaller S).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["ENCODER_INPUTS", "ENCODER_OUTPUTS", "DECODER_INPUTS", "DECODER_OUTPUTS", "RESIZE", "pair_names",
           "find_pair", "write_pair_extras"]

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = ["high_res_feats_0", "high_res_feats_1", "image_embed"]
DECODER_INPUTS = ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                  "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["masks", "iou_predictions"]
RESIZE = "stretch"  # the whole image to S×S, aspect ratio not kept (transformers' Sam2ImageProcessor, ours)


def pair_names(model_name: str) -> dict[str, str]:
    """The file names under ``onnx/`` for variant ``model_name`` (tiny, small, base-plus, large), as X-AnyLabeling
    and samexporter name the published files: ``sam2.1_hiera_<name>.encoder.onnx`` and so on, plus
    ``video_encoder``: the encoder cut at the raw FPN levels SAM2's video path reads (``onnx_video``)."""
    stem = "sam2.1_hiera_" + model_name.replace("-", "_")
    return {"encoder": f"{stem}.encoder.onnx", "decoder": f"{stem}.decoder.onnx", "config": f"{stem}.yaml",
            "video_encoder": f"{stem}.video_encoder.onnx"}


def find_pair(onnx_dir: Path, model_name: str) -> tuple[Path, Path]:
    """(encoder, decoder) paths of a tree's ``onnx/`` folder; ValueError (one line) when one is missing."""
    names = pair_names(model_name)
    enc, dec = onnx_dir / names["encoder"], onnx_dir / names["decoder"]
    for f in (enc, dec):
        if not f.is_file():
            raise ValueError(f"{f} is missing; export the tree again (quantize with --onnx '{{}}') or use "
                             "--runtime fake")
    return enc, dec


def _anylabeling_yaml(display: str, names: dict[str, str]) -> str:
    """X-AnyLabeling's model config for its SAM2 ONNX models (``type: segment_anything_2``); the model paths are
    relative to the config file, which X-AnyLabeling resolves from the config's folder."""
    import yaml
    return yaml.safe_dump({"type": "segment_anything_2", "name": f"sam2ptq_{names['config'][:-5]}",
                           "provider": "sam2ptq", "display_name": display, "encoder_model_path": names["encoder"],
                           "decoder_model_path": names["decoder"]}, sort_keys=False, allow_unicode=True)


def _fmt(v, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "not measured"


def _readme(model_name: str, names: dict[str, str], info: dict) -> str:
    """``onnx/README.md``: the interface, the preprocessing, what is quantized, measured fidelity and speed
    (``info``: the tree's onnx.json record)."""
    s = info.get("image_size", 1024)
    lat, ho = info.get("latency_s") or {}, info.get("heldout") or {}
    sq = (info.get("sqnr_db") or {}).get("vs_float") or {}
    rows = [
        f"# SAM2.1 Hiera {model_name}, quantized encoder + float decoder (ONNX)", "",
        ("**RANDOM WEIGHTS — not a real SAM2 checkpoint.**" if info.get("random_weights") else
         f"Weights: {info.get('model_source', '')}"), "",
        "The encoder/decoder pair in the interface SAM2 ONNX apps load (ONNX-SAM2-Segment-Anything, samexporter, "
        "AnyLabeling / X-AnyLabeling): open "
        f"`{names['config']}` in X-AnyLabeling (Load custom model), or bind the files by position.", "",
        "| file | inputs | outputs |", "|---|---|---|",
        f"| `{names['encoder']}` | `image` float32 [1, 3, {s}, {s}] | `high_res_feats_0` [1, 32, {s // 4}, {s // 4}], "
        f"`high_res_feats_1` [1, 64, {s // 8}, {s // 8}], `image_embed` [1, 256, {s // 16}, {s // 16}] |",
        f"| `{names['decoder']}` | `image_embed`, `high_res_feats_0`, `high_res_feats_1`, `point_coords` [N, P, 2] "
        f"(pixels of the {s}² input), `point_labels` [N, P] (1 positive, 0 negative, 2 / 3 box top-left / "
        f"bottom-right, -1 padding), `mask_input` [N, 1, {s // 4}, {s // 4}], `has_mask_input` [N] | `masks` "
        f"[N, 3, {s // 4}, {s // 4}] (logits of the three multimask tokens), `iou_predictions` [N, 3] |",
        f"| `{names['video_encoder']}` | `image`, as the encoder | `backbone_fpn_0` [1, 256, {s // 4}, {s // 4}], "
        f"`backbone_fpn_1` [1, 256, {s // 8}, {s // 8}], `vision_features` [1, 256, {s // 16}, {s // 16}]: the raw "
        "FPN levels (before conv_s0/conv_s1 and the no-memory embedding) SAM2's video predictor reads; the same "
        "quantized graph, cut there (`quantize_sam2.py predict --video`) |", "",
        f"Preprocessing: RGB, resized to {s}×{s} without keeping the aspect ratio (bilinear), /255, mean "
        "(0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), NCHW. Prompts: pixel coordinates × "
        f"{s}/width, {s}/height. Masks: the mask with the highest `iou_predictions`, upsampled bilinearly to the "
        "image size, > 0.", "",
        f"What is quantized: the Hiera trunk's linear layers, and Q·Kᵀ where the activations say so "
        f"({info.get('activations', '')}; weights as integer "
        "codes + DequantizeLinear). The FPN neck, conv_s0/conv_s1 and the whole decoder (prompt encoder + mask "
        "decoder) are float32.", "",
        f"Measured ({info.get('runtime', '?')} {info.get('runtime_version', '')}, {info.get('machine', '')}): "
        f"encoder {_fmt(lat.get('quantized_runtime', 0) * 1000 if lat else None, '.0f')} ms vs the float encoder "
        f"{_fmt(lat.get('float_runtime', 0) * 1000 if lat else None, '.0f')} ms on the same runtime; embedding "
        f"SQNR vs float {_fmt(sq.get('embedding'))} dB; held-out mask mIoU vs float SAM2 "
        f"{_fmt((ho.get('masks') or {}).get('miou_vs_fp'), '.4f')}.", "",
        "Both files' `metadata_props` carry the model, weights sha256, scheme, image size, mean/std, resize rule, "
        "sam2ptq version and `random_weights`. Torch-free predictor: `quantize_sam2.py predict --runtime "
        "onnxruntime` or `sam2ptq_core.export.onnx_predictor.OnnxSam2`.", ""]
    return "\n".join(rows)


def write_pair_extras(onnx_dir: Path, model_name: str, info: dict) -> None:
    """The X-AnyLabeling config and README.md beside the pair in ``onnx_dir``; ``info`` the tree's onnx.json."""
    names = pair_names(model_name)
    display = f"SAM2.1 Hiera {model_name} (sam2ptq, {info.get('scheme', 'quantized')})"
    (onnx_dir / names["config"]).write_text(_anylabeling_yaml(display, names))
    (onnx_dir / "README.md").write_text(_readme(model_name, names, info))

