"""The encoder file for SAM2's video path, cut from the tree's apps' encoder (onnx only, no torch).

The apps' encoder returns what ``Sam2Model.get_image_embeddings`` returns: conv_s0/conv_s1 applied to the two
high-resolution levels and ``no_memory_embedding`` added to the lowest. ``Sam2VideoModel`` needs the vision
encoder's raw FPN levels instead (it applies conv_s0/conv_s1 itself and conditions the lowest level on memory), so
feeding it the apps' outputs would apply them twice. The video file is the same graph up to those raw tensors:

    image [1, 3, S, S] → backbone_fpn_0 [1, C, S/4, S/4], backbone_fpn_1 [1, C, S/8, S/8],
                         vision_features [1, C, S/16, S/16]      (C = 256, the FPN width; SAM2's forward_image names)

found in the graph as the data inputs of the Conv nodes whose weights are ``mask_decoder.conv_s0`` / ``conv_s1``
and, walking back through the layout ops (Transpose, Reshape), the tensor the ``no_memory_embedding`` Add reads.
The quantized trunk's nodes and initializers are the apps' file's own, unchanged."""
from __future__ import annotations

from pathlib import Path

__all__ = ["VIDEO_ENCODER_OUTPUTS", "write_video_encoder"]

VIDEO_ENCODER_OUTPUTS = ["backbone_fpn_0", "backbone_fpn_1", "vision_features"]
LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def _raw_levels(graph) -> list[str]:
    """The tensor names of the three raw FPN levels in an apps' encoder graph; ValueError when it has none."""
    made = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}

    def conv_input(weight_suffix: str) -> str | None:
        hits = [n.input[0] for n in graph.node if n.op_type == "Conv" and n.input[1].endswith(weight_suffix)]
        return hits[0] if len(hits) == 1 else None

    def before_layout(name: str) -> str:
        while name in made and made[name].op_type in LAYOUT_OPS:
            name = made[name].input[0]
        return name

    adds = [n for n in graph.node if n.op_type == "Add" and any(i.endswith("no_memory_embedding") for i in n.input)]
    fpn2 = None
    if len(adds) == 1:
        data = [i for i in adds[0].input if i not in inits]
        fpn2 = before_layout(data[0]) if len(data) == 1 else None
    found = [conv_input("mask_decoder.conv_s0.weight"), conv_input("mask_decoder.conv_s1.weight"), fpn2]
    if None in found:
        raise ValueError("the encoder file has no conv_s0 / conv_s1 / no_memory_embedding nodes to cut at: not an "
                         "encoder exported by sam2ptq; export the tree again")
    return found


def write_video_encoder(encoder: Path, out: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``out``: the apps' ``encoder`` file cut at the raw FPN levels, outputs named
    ``VIDEO_ENCODER_OUTPUTS``, its metadata_props kept (``metadata`` updates them). Checked with onnx's checker."""
    import onnx
    from onnx import helper, utils
    model = onnx.load(str(encoder))
    raw = _raw_levels(model.graph)
    for src, name in zip(raw, VIDEO_ENCODER_OUTPUTS):
        model.graph.node.append(helper.make_node("Identity", [src], [name], name=f"video_{name}"))
    model = onnx.shape_inference.infer_shapes(model)
    cut = utils.Extractor(model).extract_model([i.name for i in model.graph.input], VIDEO_ENCODER_OUTPUTS)
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(metadata or {})
    for k, v in meta.items():
        cut.metadata_props.add(key=k, value=str(v))
    cut.ir_version, cut.producer_name, cut.producer_version = model.ir_version, model.producer_name, \
        model.producer_version
    onnx.checker.check_model(cut)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(cut, str(out))
    return out
