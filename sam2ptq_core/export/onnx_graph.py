"""The quantized encoder as an ONNX graph, traced from QuantLinear's own forward (``layer_recipe.quantized_linear``).

Nothing here restates the quantized math. A model whose QuantLinear modules are packed (their weights as codes,
``qdq.PackedWeight``) and run static activations (``LayerScheme.static8``) is exported by torch's dynamo exporter;
the two ops of ``algorithms/qdq.py`` lower to the ONNX operators whose semantics their eager code implements:

    sam2ptq::dequantize_linear   → DequantizeLinear (per channel, or blocked along the inputs; 4-bit codes as
                                   int4/uint4 initializers, folded by the exporter's optimizer)
    sam2ptq::quantize_dequantize → QuantizeLinear → DequantizeLinear (uint8 per tensor, static parameters)

so each quantized linear becomes x ─(+shift)─ rotate (two MatMuls) ─ Div s ─ Q ─ DQ ─ MatMul(DQ(codes)) ─ Add bias,
plus the float branch. Everything else of the encoder stays float. onnx and onnxscript are the ``'.[onnx]'`` extra.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..algorithms.quantizers import QParams
from ..sam2.loading import separable_position_embedding
from ..sam2.quantized_model import convert_static, pack_weights, quant_linears
from .onnx_interface import ENCODER_INPUTS, ENCODER_OUTPUTS
from .runtime_choice import need

__all__ = ["OPSET", "runtime_model", "export_module", "export_onnx", "export_float", "translation_table",
           "activation_format"]

OPSET = 21  # blocked (4-bit) DequantizeLinear


def translation_table() -> dict:
    """torch op → onnxscript function, for ``torch.onnx.export(custom_translation_table=…)``."""
    need("onnxscript")
    from onnxscript import ir
    from onnxscript import opset21 as op

    def dequantize_linear(codes, scale, zero, axis: int, block_size: int, bits: int):
        if bits == 4:  # the codes are 4-bit values: store them so (a constant Cast the optimizer folds)
            t = ir.DataType.INT4 if codes.dtype == ir.DataType.INT8 else ir.DataType.UINT4
            codes, zero = op.Cast(codes, to=t), op.Cast(zero, to=t)
        if block_size:
            return op.DequantizeLinear(codes, scale, zero, axis=axis, block_size=block_size)
        return op.DequantizeLinear(codes, scale, zero, axis=axis)

    def quantize_dequantize(x, scale, zero):
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)
    return {torch.ops.sam2ptq.dequantize_linear.default: dequantize_linear,
            torch.ops.sam2ptq.quantize_dequantize.default: quantize_dequantize}


def runtime_model(model: nn.Module, qlayers: dict[str, dict], qparams: dict[str, QParams]) -> nn.Module:
    """A float32 copy of a quantized Sam2Model as graph runtimes run it: each QuantLinear at its static scheme with
    ``qparams`` (``qdq.RangeObserver``'s result; layers with float activations need none) and its weight computed
    from its saved codes. Its eager forward is what ``export_onnx`` writes."""
    m = copy.deepcopy(model).float().eval()
    convert_static(m, qparams)
    return pack_weights(m, {n: qlayers[n] for n in quant_linears(m)})


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        """image [1, 3, S, S] (normalised) → high_res_feats_0, high_res_feats_1, image_embed: what
        ``Sam2Model.get_image_embeddings`` returns (conv_s0/conv_s1 applied, no_mem_embed added), in its order."""
        return tuple(self.model.get_image_embeddings(image))


def activation_format(model: nn.Module) -> str:
    """The static activation formats of ``model``'s QuantLinear modules, as the file's metadata and record say it,
    e.g. "static per tensor, zero point 0: sint8 ×41, uint8 ×10 (GELU-shifted inputs)", plus the attention modules
    whose Q·Kᵀ is quantized (``quant.ipts.attention``): ", Q·Kᵀ sint8 ×12"."""
    from collections import Counter

    from ..sam2.attention import attention_modules
    n = Counter(ql.scheme.a_dtype for ql in quant_linears(model).values() if ql.scheme.a_static)
    parts = [f"{d} ×{k}" + (" (GELU-shifted inputs)" if d == "uint8" else "") for d, k in sorted(n.items())]
    qk = sum(getattr(m, "qk_quant", None) is not None and m.qk_quant.static for m in attention_modules(model).values())
    parts += [f"Q·Kᵀ sint8 ×{qk}"] if qk else []
    return "static per tensor, zero point 0: " + ", ".join(parts) if parts else "float"


def _check_exportable(model: nn.Module) -> int:
    qls = quant_linears(model)
    for n, ql in qls.items():
        if ql.packed is None or (ql.scheme.a_dtype is not None and not ql.scheme.a_static):
            raise ValueError(f"{n} is not in its runtime form (packed codes, static activations): "
                             "build the model with onnx_graph.runtime_model")
    return len(qls)


def export_module(path: Path, module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                  metadata: dict[str, str] | None = None, dynamic_shapes=None) -> None:
    """Trace ``module(*args)`` with torch's dynamo exporter and our ops' translations; write ``path`` (checked).
    ``dynamic_shapes``: as ``torch.onnx.export``'s (one entry per argument; None: every shape static)."""
    onnx = need("onnx")
    import logging
    import warnings
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines: nothing we export uses it
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, verbose=False,
                                     input_names=input_names, output_names=output_names,
                                     dynamic_shapes=dynamic_shapes, custom_translation_table=translation_table())
    finally:
        quiet.setLevel(level)
    _fold_4bit_codes(prog.model)
    proto = prog.model_proto
    _unshare_qparams(proto)
    _rank2_qdq_bias(proto)
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


def _fold_4bit_codes(model) -> None:
    """Store every layer's 4-bit codes as an INT4/UINT4 initializer (two codes a byte): fold the Cast that
    ``translation_table`` puts after them. The exporter's own optimizer folds only tensors under 512·512 elements,
    which left the large layers' codes one per byte behind a Cast (the 1024² tiny W4A8 encoder: 25.6 MB of uint8
    codes where 12.8 MB of uint4 hold them)."""
    from onnxscript import ir, optimizer
    four = {ir.DataType.INT4, ir.DataType.UINT4}

    def cast_to_4bit(node):
        return True if node.op_type == "Cast" and ir.DataType(node.attributes["to"].as_int()) in four else None
    optimizer.fold_constants(model, should_fold=cast_to_4bit)
    optimizer.remove_unused_nodes(model)


def _unshare_qparams(proto) -> None:
    """Give every QuantizeLinear / DequantizeLinear its own scale and zero-point initializers. The exporter stores
    equal constants once (the all-zero zero points of every sint8 weight, equal activation zero points), and
    ONNX Runtime 1.32's s8→u8 transforms (on with ``session.x64quantprecision``) rewrite a zero point per node
    under its name: a shared one makes the session fail to start ("Attempt to replace the existing tensor", the
    W8A8 encoder at 512²). Leaving a signed weight's zero point out does not help: the same transform then adds a
    per-tensor zero point to a per-channel node, which fails at run time. Explicit per-node zeros are what ONNX
    Runtime's own quantizer writes."""
    from onnx import TensorProto
    inits = {t.name: t for t in proto.graph.initializer}
    seen: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i in range(1, len(node.input)):
            name = node.input[i]
            if name not in inits:
                continue
            if name in seen:
                copy_ = TensorProto()
                copy_.CopyFrom(inits[name])
                copy_.name = f"{name}__{node.name or len(seen)}"
                while copy_.name in inits:
                    copy_.name += "_"
                proto.graph.initializer.append(copy_)
                inits[copy_.name] = copy_
                node.input[i] = copy_.name
            seen.add(node.input[i])


def _rank2_qdq_bias(proto) -> None:
    """Store the bias of each MatMul(DequantizeLinear(QuantizeLinear(x)), W) → Add as [1, N] instead of [N] (the
    same sum by broadcasting). ONNX Runtime 1.32's MatMulAddFusion, on in a default session (the one SAM2 apps
    open), turns an N-d QDQ MatMul + [N] bias into Reshape → Gemm → Reshape and mistypes the QuantizeLinear it
    then inserts, so the session does not start ("output_dtype INT8 does not match y_zero_point type UINT8",
    samexporter's client on the reduced W4A4 encoder); it leaves N-d MatMuls with a 2-d bias alone (its Gemm
    bias check). Our own sessions also disable it (``runtimes``)."""
    from onnx import numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    made = {o: n for n in proto.graph.node for o in n.output}
    uses: dict[str, int] = {}
    stale: set[str] = set()
    copied: set[str] = set()
    for n in proto.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for node in proto.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        mm, b = made.get(node.input[0]), inits.get(node.input[1])
        if mm is None or mm.op_type != "MatMul" or b is None or len(b.dims) != 1:
            continue
        x = made.get(mm.input[0])  # the quantized input's DequantizeLinear (the weight may come through a Concat)
        if x is None or x.op_type != "DequantizeLinear":
            continue
        arr = numpy_helper.to_array(b).reshape(1, -1)
        if uses[b.name] == 1:
            b.CopyFrom(numpy_helper.from_array(arr, b.name))
            stale.add(b.name)
        else:  # shared with another node: a [1, N] copy of its own
            t = numpy_helper.from_array(arr, f"{b.name}__rank2_{node.name}")
            proto.graph.initializer.append(t)
            node.input[1] = t.name
            copied.add(b.name)
    used = {i for n in proto.graph.node for i in n.input}
    keep_init = [t for t in proto.graph.initializer if t.name in used or t.name not in copied]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep_init)
    keep = [v for v in proto.graph.value_info if v.name not in stale]  # their old [N] shapes
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)


def _export_encoder(path: Path, model: nn.Module, image_size: int, metadata: dict[str, str] | None) -> None:
    """The image encoder of ``model`` in the SAM2 apps' interface (``onnx_interface``): image [1, 3, S, S] static →
    high_res_feats_0, high_res_feats_1, image_embed. The position embedding's bicubic Resize is traced as
    MatMuls (OpenVINO would otherwise spend most of its compile time folding it: ``separable_position_embedding``)."""
    with separable_position_embedding(model, image_size):
        export_module(path, _Encoder(model), (torch.zeros(1, 3, image_size, image_size),), ENCODER_INPUTS,
                      ENCODER_OUTPUTS, metadata)


def export_onnx(path: Path, model: nn.Module, image_size: int, metadata: dict[str, str] | None = None) -> dict:
    """Write ``path`` (the encoder) traced from ``model`` (``runtime_model``'s), with ``metadata`` as the file's
    metadata_props. Returns {"layers", "bytes", "opset"}."""
    n = _check_exportable(model)
    _export_encoder(path, model, image_size, metadata)
    return {"layers": n, "bytes": path.stat().st_size, "opset": OPSET}


def export_float(path: Path, fp_model: nn.Module, image_size: int, metadata: dict[str, str] | None = None) -> None:
    """The float encoder as ONNX, exported like the quantized one (the baseline a user would deploy)."""
    _export_encoder(path, fp_model.float().eval(), image_size, metadata)
