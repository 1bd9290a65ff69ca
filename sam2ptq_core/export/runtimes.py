"""Graph runtimes (OpenVINO, ONNX Runtime): which are installed, a session over an ONNX file (OpenVINO's through its
model cache, ``model_cache.ModelCache``), and SAM2 with its image encoder run by one. "Runtime" in sam2ptq means one
of these; onnxruntime is the ``'.[onnx]'`` extra, OpenVINO the ``'.[openvino]'`` extra, and a missing one is one
error line (``MissingRuntime``). Choosing one (torch-free) is ``runtime_choice``."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model_cache import ModelCache
from .runtime_choice import (
    RUNTIMES,
    MissingRuntime,
    available_runtimes,
    check_exporter,
    machine,
    need,
    pick_runtime,
    runtime_version,
)

__all__ = ["RUNTIMES", "MissingRuntime", "need", "available_runtimes", "pick_runtime", "check_exporter",
           "open_runtime", "runtime_version", "machine", "float_precision", "RuntimeSam2", "ModelCache"]


def _onnxruntime_session(path: Path, threads: int | None):
    ort = need("onnxruntime")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    # u8·s8 products summed in pairs can overflow int16 on x86 CPUs without VNNI (AVX2's vpmaddubsw saturates);
    # ONNX Runtime then computes them in a wider type at some speed cost instead of silently wrong
    so.add_session_config_entry("session.x64quantprecision", "1")
    # MatMulAddFusion of ONNX Runtime 1.32 turns an N-d QDQ MatMul + bias into Gemm and mistypes the QuantizeLinear
    # it inserts on the way (a session that cannot start); without it the QDQ MatMuls still run as int8 kernels.
    # ConstantSharing merges the encoder's identical scalar zero points, and a later QDQ transform of 1.32 then
    # fails to start the session ("Attempt to replace the existing tensor", W8A8 encoder at 256²)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["MatMulAddFusion", "ConstantSharing"])
    return lambda px: sess.run(None, {"pixel_values": px})


def _openvino_session(path: Path, threads: int | None, precision: str, cache: ModelCache | None):
    ov = need("openvino")
    from openvino.frontend import FrontEndManager
    if not FrontEndManager().load_by_framework("onnx").supported(str(path)):
        # else OpenVINO tries each of its other readers, and they print their parse errors on stderr
        raise RuntimeError(f"{Path(path).name} is not an ONNX file OpenVINO can read: truncated, or another format")
    cfg = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    if precision == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    cache = cache or ModelCache.default()
    model = cache.prepare(Path(path), precision, threads)  # None: not writable, compile without (warned)
    if model is not None:
        cfg["CACHE_DIR"] = str(model.parent)
    try:
        compiled = ov.Core().compile_model(str(model or path), "CPU", cfg)
    except Exception:
        if model is not None:
            cache.discard(model.parent)
        raise
    if model is not None:
        cache.bound(keep=model.parent)
    req = compiled.create_infer_request()

    def run(px):
        res = req.infer({0: px})
        return [res[o] for o in compiled.outputs]
    return run


def open_runtime(path: Path, runtime: str, threads: int | None = None, precision: str = "auto",
                 cache: ModelCache | None = None):
    """A callable pixels [1, 3, S, S] float32 (numpy) → [fpn0, fpn1, embedding] (numpy) running ``path`` on the CPU
    with ``runtime`` (openvino or onnxruntime). ``precision`` (OpenVINO): "auto" keeps its default, bf16 for the
    float ops on CPUs that have bf16 (the fastest); "f32" runs them in float32. OpenVINO compiles the Hiera graph in
    about 85 s on 2 cores; its model cache ``cache`` (a run's: ``ModelCache.under(local_dir(cfg), …)``; None:
    ``ModelCache.default()``) makes every later compile of the same file 0.3 s, says when a compile is not cached
    and falls back to compiling without it (one warning) where it cannot be written."""
    if runtime == "onnxruntime":
        return _onnxruntime_session(path, threads)
    if runtime == "openvino":
        return _openvino_session(path, threads, precision, cache)
    raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")


def float_precision(runtime: str, wanted: str) -> str:
    """The precision the runtime's float ops run in."""
    if runtime == "openvino" and wanted == "auto":
        import openvino as ov
        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return "f32"


class RuntimeSam2(nn.Module):
    """The float Sam2Model with its image encoder run by a graph runtime (``open_runtime``): prompt encoder and
    mask decoder stay in torch, so masks can be scored like the fake-quant model's."""

    def __init__(self, sam2: nn.Module, encoder):
        super().__init__()
        self.sam2, self.encoder = sam2, encoder

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        outs = self.encoder(pixel_values.detach().float().cpu().numpy())
        return [torch.from_numpy(o).to(device=pixel_values.device, dtype=pixel_values.dtype) for o in outs]

    def forward(self, **kw):
        return self.sam2(**kw)
