"""Graph runtimes (OpenVINO, ONNX Runtime): which are installed and a session over an ONNX file (OpenVINO's through
its model cache, ``model_cache.ModelCache``), inputs bound by position as SAM2 apps bind them. No torch: the
torch-free predictor (``onnx_predictor``) runs on these. "Runtime" in sam2ptq means one of these; onnxruntime is the
``'.[onnx]'`` extra, OpenVINO the ``'.[openvino]'`` extra, and a missing one is one error line (``MissingRuntime``).
Choosing one is ``runtime_choice``; SAM2 with its encoder on a runtime, for scoring, is ``onnx_scoring.RuntimeSam2``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .model_cache import ModelCache
from .runtime_choice import (
    NO_VNNI,
    RUNTIMES,
    MissingRuntime,
    NoVnni,
    available_runtimes,
    check_exporter,
    int8_dot_products,
    machine,
    need,
    pick_runtime,
    runtime_version,
)

__all__ = ["RUNTIMES", "MissingRuntime", "NoVnni", "need", "available_runtimes", "pick_runtime", "check_exporter",
           "open_runtime", "Session", "runtime_version", "machine", "float_precision", "ModelCache"]


@dataclass(frozen=True)
class Session:
    """A compiled file: ``session(*inputs)`` → outputs (numpy, in the file's order); the names of its inputs and
    outputs (OpenVINO gives a tensor several names: the ONNX one among them) and the first input's shape (None for
    a dynamic dimension), where SAM2 apps read the image size."""
    run: object
    input_names: list[frozenset[str]]
    output_names: list[frozenset[str]]
    input_shape: list[int | None]

    def __call__(self, *xs):
        return self.run(*xs)

    def has_interface(self, inputs: list[str], outputs: list[str]) -> bool:
        """The file's inputs and outputs are exactly ``inputs`` and ``outputs``, in that order."""
        return (len(inputs) == len(self.input_names) and len(outputs) == len(self.output_names)
                and all(n in s for n, s in zip(inputs + outputs, self.input_names + self.output_names)))

    def describe(self) -> str:
        names = [sorted(s)[-1] for s in self.input_names], [sorted(s)[-1] for s in self.output_names]
        return f"inputs {names[0]}, outputs {names[1]}"


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
    names = [i.name for i in sess.get_inputs()]
    shape = [d if isinstance(d, int) else None for d in sess.get_inputs()[0].shape]
    return Session(lambda *xs: sess.run(None, dict(zip(names, xs))), [frozenset([n]) for n in names],
                   [frozenset([o.name]) for o in sess.get_outputs()], shape)


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
    if not int8_dot_products():
        _refuse_int8(compiled, path)
    req = compiled.create_infer_request()

    def run(*xs):
        res = req.infer(dict(enumerate(xs)))
        return [res[o] for o in compiled.outputs]
    shape = [d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape()]
    return Session(run, [frozenset(i.get_names()) for i in compiled.inputs],
                   [frozenset(o.get_names()) for o in compiled.outputs], shape)


def _refuse_int8(compiled, path: Path) -> None:
    """On a CPU without VNNI, a file that OpenVINO runs with int8 kernels is refused (``runtime_choice.NO_VNNI``):
    what the kernels compute is read from the compiled model itself (each op's runtime precision)."""
    def info(op, key: str) -> str:
        ri = op.get_rt_info()
        return ri[key].astype(str) if key in ri else ""
    int8 = [op.get_friendly_name() for op in compiled.get_runtime_model().get_ops()
            if info(op, "runtimePrecision") in ("u8", "i8")
            and info(op, "layerType") in ("FullyConnected", "MatMul", "Convolution", "Subgraph")]
    if int8:
        raise NoVnni(f"{Path(path).name}: {NO_VNNI} ({len(int8)} int8 ops); run it with ONNX Runtime "
                     "(--runtime onnxruntime, onnx.runtime: onnxruntime) or on a CPU with VNNI")


def open_runtime(path: Path, runtime: str, threads: int | None = None, precision: str = "auto",
                 cache: ModelCache | None = None) -> Session:
    """A ``Session``: a callable (numpy inputs in the file's input order) → [numpy outputs in its output order]
    running ``path`` on the CPU with ``runtime`` (openvino or onnxruntime); for the encoder pixels [1, 3, S, S]
    float32 → [high_res_feats_0, high_res_feats_1, image_embed]. The shapes the file leaves dynamic stay dynamic.
    ``precision`` (OpenVINO): "auto" keeps its default, bf16 for the float ops on CPUs that have bf16 (the
    fastest); "f32" runs them in float32. OpenVINO compiles the Hiera graph in
    about 1.3 s on 2 cores at 1024²; its model cache ``cache`` (a run's: ``ModelCache.under(local_dir(cfg), …)``; None:
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

