"""ONNX export of the quantized encoder, for graph runtimes with real int8 kernels (OpenVINO, ONNX Runtime).

The file carries the pipeline's own codes and scales, never re-quantized by a runtime's tool. Each quantized linear
becomes, in the exported graph:

    x ─(+shift)─ rotate ─ Div s ─ QuantizeLinear ─ DequantizeLinear ─┐
                                         codes ─ DequantizeLinear ─ MatMul ─ Add bias ─ Add ─ y
    x ─ rotate ─ Div s ─ MatMul aᵀ ─ MatMul bᵀ (the low-rank branch, float) ──────────┘

- weights: the integer codes as initializers with their scales (and zero points for unsigned formats):
  8-bit per output channel as ``DequantizeLinear(axis=1)``, symmetric sint8 with zero point 0 (the form TensorRT and
  oneDNN take); 4-bit groups as blocked ``DequantizeLinear(axis=0, block_size=group)`` in int4/uint4 (opset 21),
  offered for size;
- activations: 8-bit per tensor with static scales from the calibration ranges (``LayerScheme.static8``), the form
  graph runtimes run in int8. This differs from the pipeline's dynamic per-token (or per-group) activations; the
  export's summary states what that costs in SQNR;
- smoothing: an explicit Div by s (QuantLinear's op, so the activation codes round alike); rotation: the Hadamard
  matrix's Kronecker factors, x·R = Bᵀ·X·H_{2^m}/√n with x viewed [k, 2^m] (two small MatMuls, not one dense n×n
  matrix per layer); the GELU shift: an Add, the branch reading the unshifted input, as QuantLinear does.

Everything else of the encoder stays float. ``RuntimeLinear`` is the module exported in place of each QuantLinear;
``_to_qdq`` then swaps each main weight for its codes and inserts the activation QDQ pair. onnx and onnxruntime are
the ``'.[onnx]'`` extra, OpenVINO the ``'.[openvino]'`` extra; a missing one is one error line.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..algorithms.metrics import sqnr_db
from ..algorithms.quantizers import QParams, range_qparams
from ..algorithms.rotation import hadamard, hadamard_factors, random_signs
from ..algorithms.scheme import LayerScheme, qdtype
from ..algorithms.statistics import LayerStats
from ..sam2.loading import trunk
from ..sam2.quantized_model import QuantLinear

__all__ = ["RUNTIMES", "MissingRuntime", "activation_ranges", "static_twin", "RuntimeLinear", "export_onnx",
           "open_runtime", "available_runtimes", "pick_runtime", "RuntimeSam2", "time_encoder", "build_export",
           "check_exporter", "score_runtime"]

RUNTIMES = ("openvino", "onnxruntime")
EXTRA = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}
OPSET = 21  # blocked (4-bit) DequantizeLinear


class MissingRuntime(RuntimeError):
    """A runtime or the exporter's dependency is not installed; the message names the extra to install."""


def _need(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingRuntime(f"{module} is not installed; install the extra: pip install -e '.[{EXTRA[module]}]'"
                             ) from None


def available_runtimes() -> list[str]:
    """The runtimes importable here, fastest first (OpenVINO measured fastest on CPU, benchmarks/RESULTS.md)."""
    import importlib.util

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError, AttributeError):  # e.g. blocked in sys.modules
            return False
    return [r for r in RUNTIMES if importable(r)]


def activation_ranges(stats: dict[str, LayerStats], model: nn.Module) -> dict[str, tuple[float, float]]:
    """(min, max) of each QuantLinear's main-path input ((x + shift)·R) / s over the calibration tokens: exact from
    the per-channel min/max without rotation; from the token sample with rotation (a rotated channel mixes every
    input channel, so only the sample tells its range)."""
    out = {}
    for k, ql in trunk(model).named_modules():
        if not isinstance(ql, QuantLinear) or ql.scheme.a_dtype is None:
            continue
        st, s, shift = stats[k], ql.smooth, ql.scheme.shift
        if ql.rotation is not None:
            x = ql.rotation.apply(st.sample.double() + shift)
            x = x / s.double() if s is not None else x
            out[k] = (float(x.min()), float(x.max()))
            continue
        lo, hi = st.colmin.double() + shift, st.colmax.double() + shift
        if s is not None:
            lo, hi = lo / s.double(), hi / s.double()
        out[k] = (float(lo.min()), float(hi.max()))
    return out


def static_twin(model: nn.Module, ranges: dict[str, tuple[float, float]]) -> nn.Module:
    """A copy of a quantized model whose QuantLinear modules run their runtime scheme (``LayerScheme.static8``:
    8-bit per-tensor activations with static parameters from ``ranges``): what the ONNX export computes."""
    import copy
    twin = copy.deepcopy(model)
    for k, ql in trunk(twin).named_modules():
        if isinstance(ql, QuantLinear) and k in ranges:
            ql.scheme = ql.scheme.static8()
            ql.act_qparams = range_qparams(*ranges[k], ql.scheme.a_dtype)
    return twin


class RuntimeLinear(nn.Module):
    """QuantLinear's computation in the ops a graph exporter emits; ``main_w`` ([in, out], the dequantized codes)
    is replaced by its codes after export, and the activation QDQ pair is inserted before the main MatMul."""

    def __init__(self, ql: QuantLinear):
        super().__init__()
        n_in = ql.in_features
        self.shift = float(ql.scheme.shift)
        self.rot_k = 0
        if ql.rotation is not None:  # x·R = Bᵀ·(x ⊙ signs viewed [k, 2^m])·H_{2^m} / √n: two small dense factors
            bases, p2 = hadamard_factors(n_in)
            B = torch.ones(1, 1, dtype=torch.float64)
            for b in bases:
                B = torch.kron(B, hadamard(b) * b ** 0.5)  # ±1 entries
            self.rot_k, self.rot_p2 = B.shape[0], p2
            self.register_buffer("rot_h", (hadamard(p2) * (p2 / n_in) ** 0.5).float())
            self.register_buffer("rot_bt", B.T.contiguous().float() if B.shape[0] > 1 else None)
            self.register_buffer("rot_signs", random_signs(n_in, ql.rotation.seed).float()
                                 if ql.rotation.random else None)
        self.register_buffer("smooth", ql.smooth.float().clone() if ql.smooth is not None else None)
        self.main_w = nn.Parameter(ql.weight.detach().float().T.contiguous(), requires_grad=False)
        self.register_buffer("bias_v", None if ql.bias is None else ql.bias.detach().float().clone())
        self.register_buffer("a_t", None if ql.lora_a is None else ql.lora_a.float().T.contiguous())
        self.register_buffer("b_t", None if ql.lora_b is None else ql.lora_b.float().T.contiguous())
        self.in_features = n_in

    def _transform(self, v: torch.Tensor) -> torch.Tensor:
        if self.rot_k:
            if self.rot_signs is not None:
                v = v * self.rot_signs
            shape = v.shape
            v = v.reshape(*shape[:-1], self.rot_k, self.rot_p2) @ self.rot_h
            if self.rot_bt is not None:
                v = self.rot_bt @ v
            v = v.reshape(shape)
        return v / self.smooth if self.smooth is not None else v  # Div, as QuantLinear: the same codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = self._transform(x)
        xm = self._transform(x + self.shift) if self.shift else xb
        y = xm @ self.main_w
        if self.bias_v is not None:
            y = y + self.bias_v
        if self.a_t is not None:
            y = y + (xb @ self.a_t) @ self.b_t
        return y


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        return tuple(self.model.get_image_embeddings(pixel_values))


def _runtime_copy(model: nn.Module) -> tuple[nn.Module, dict[str, QuantLinear]]:
    """A deep copy of a quantized Sam2Model with each QuantLinear swapped for its RuntimeLinear."""
    import copy
    m = copy.deepcopy(model).float().eval()
    root = trunk(m)
    qls = {n: mod for n, mod in root.named_modules() if isinstance(mod, QuantLinear)}
    for name, ql in qls.items():
        parent, leaf = name.rsplit(".", 1)
        setattr(root.get_submodule(parent), leaf, RuntimeLinear(ql))
    return m, qls


def _int_tensor(name: str, codes: torch.Tensor, dtype: str):
    """An ONNX initializer of integer codes in their own width (int4/uint4 packed by onnx)."""
    import ml_dtypes
    import numpy as np
    from onnx import numpy_helper
    qd = qdtype(dtype)
    np_type = {(True, 8): np.int8, (False, 8): np.uint8, (True, 4): ml_dtypes.int4, (False, 4): ml_dtypes.uint4}
    if (qd.signed, qd.bits) not in np_type:
        raise NotImplementedError(f"no ONNX integer type for {dtype} weights")
    return numpy_helper.from_array(codes.to(torch.int32).numpy().astype(np_type[(qd.signed, qd.bits)]), name)


def _weight_dq(t: str, q: dict, w_dtype: str) -> tuple[list, list]:
    """(initializers, nodes) computing the layer's dequantized weight [in, out] as ``<t>.w_dq`` from its codes:
    per output channel (axis 1), or blocked along the input channels (axis 0, block_size = group). A ragged last
    group (Hiera's 96 inputs in groups of 64) is its own per-channel DequantizeLinear, concatenated after the full
    blocks (OpenVINO needs the blocked axis to be a multiple of the block)."""
    from onnx import helper, numpy_helper
    codes, scale = q["codes"].T.contiguous(), q["scale"].float().T.contiguous()  # [in, out], [groups, out]
    # an explicit zero point even for symmetric formats (all 0): ONNX Runtime 1.32's transpose optimizer mistypes
    # the QuantizeLinear it inserts for a DequantizeLinear without one (onnxruntime PR 29192)
    zero = q["zero"].T.contiguous() if q["zero"].numel() else torch.zeros_like(scale)
    n_in, g = codes.shape[0], int(q["group_size"])
    parts = []  # (suffix, codes, scale, zero, attrs)
    if scale.shape[0] == 1:
        parts.append(("", codes, scale[0], zero[0], {"axis": 1}))
    else:
        full = n_in // g
        parts.append(("", codes[:full * g], scale[:full], zero[:full], {"axis": 0, "block_size": g}))
        if full * g < n_in:
            parts.append((".tail", codes[full * g:], scale[full], zero[full], {"axis": 1}))
    inits, nodes, outs = [], [], []
    for suf, c, s, z, attrs in parts:
        n = f"{t}.w{suf}"
        inits += [_int_tensor(f"{n}_codes", c, w_dtype), numpy_helper.from_array(s.numpy(), f"{n}_scale"),
                  _int_tensor(f"{n}_zero", z, w_dtype)]
        out = f"{t}.w_dq" if len(parts) == 1 else f"{n}_part_dq"
        nodes.append(helper.make_node("DequantizeLinear", [f"{n}_codes", f"{n}_scale", f"{n}_zero"], [out],
                                      name=out, **attrs))
        outs.append(out)
    if len(parts) > 1:
        nodes.append(helper.make_node("Concat", outs, [f"{t}.w_dq"], name=f"{t}.w_dq", axis=0))
    return inits, nodes


def _to_qdq(graph, qlayers: dict[str, dict], schemes: dict[str, LayerScheme], act: dict[str, QParams],
            prefix: str) -> int:
    """Replace each ``<layer>.main_w`` initializer by its codes + DequantizeLinear and quantize the MatMul's
    activation input with the layer's static parameters. Returns the number of layers converted."""
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in graph.initializer}
    by_weight = {n.input[1]: n for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2}
    new_nodes, done = {}, 0
    for name, q in qlayers.items():
        wname = f"{prefix}{name}.main_w"
        node = by_weight.get(wname)
        if node is None or wname not in inits:
            raise RuntimeError(f"exported graph has no MatMul on {wname}: the exporter changed the graph's names")
        sch = schemes[name]
        t = f"{prefix}{name}"
        extra, pre = _weight_dq(t, q, sch.w_dtype)
        x_in = node.input[0]
        if name in act:
            a_dt = sch.static8().a_dtype
            qp = act[name]
            extra.append(numpy_helper.from_array(qp.scale.reshape(()).float().numpy(), f"{t}.a_scale"))
            zp = torch.zeros(()) if qp.zero is None else qp.zero.reshape(())
            extra.append(_int_tensor(f"{t}.a_zero", zp, a_dt))
            pre += [helper.make_node("QuantizeLinear", [x_in, f"{t}.a_scale", f"{t}.a_zero"], [f"{t}.a_q"],
                                     name=f"{t}.a_q"),
                    helper.make_node("DequantizeLinear", [f"{t}.a_q", f"{t}.a_scale", f"{t}.a_zero"], [f"{t}.a_dq"],
                                     name=f"{t}.a_dq")]
            node.input[0] = f"{t}.a_dq"
        node.input[1] = f"{t}.w_dq"
        graph.initializer.remove(inits[wname])
        graph.initializer.extend(extra)
        new_nodes[id(node)] = pre
        done += 1
    ordered = []
    for n in graph.node:  # the new nodes right before the MatMul they feed keeps the graph topologically sorted
        ordered += new_nodes.get(id(n), [])
        ordered.append(n)
    del graph.node[:]
    graph.node.extend(ordered)
    return done


def _dedupe_initializers(graph) -> int:
    """Make identical initializers one (the same Hadamard matrix of every layer of a width, exported per module);
    returns the number removed."""
    import hashlib
    first, rename = {}, {}
    for init in list(graph.initializer):
        key = (init.data_type, tuple(init.dims), hashlib.sha256(init.raw_data).hexdigest()) if init.raw_data else None
        if key is None or init.ByteSize() < 4096:
            continue
        if key in first:
            rename[init.name] = first[key]
            graph.initializer.remove(init)
        else:
            first[key] = init.name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(rename)


def export_onnx(path: Path, model: nn.Module, qlayers: dict[str, dict], schemes: dict[str, LayerScheme],
                image_size: int) -> dict:
    """Write ``path`` (the encoder: pixel_values [1, 3, S, S] → fpn0, fpn1, embedding) from a quantized Sam2Model
    whose QuantLinear modules run their static runtime scheme (``act_qparams`` set), and their saved layers (codes,
    scale, zero). Returns {"layers", "bytes", "opset"}."""
    onnx = _need("onnx")
    _need("onnxscript")
    import warnings
    rt, qls = _runtime_copy(model)
    act = {n: ql.act_qparams for n, ql in qls.items() if ql.act_qparams is not None}
    x = torch.zeros(1, 3, image_size, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    import logging
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines: nothing we export uses it
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(_Encoder(rt), (x,), dynamo=True, opset_version=OPSET, verbose=False,
                                 input_names=["pixel_values"], output_names=["fpn0", "fpn1", "embedding"])
    quiet.setLevel(level)
    proto = prog.model_proto
    n = _to_qdq(proto.graph, {k: qlayers[k] for k in qls}, schemes, act, "model.vision_encoder.backbone.")
    _dedupe_initializers(proto.graph)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return {"layers": n, "bytes": path.stat().st_size, "opset": OPSET}


def open_runtime(path: Path, runtime: str, threads: int | None = None, precision: str = "auto"):
    """A callable pixels [1, 3, S, S] float32 (numpy) → [fpn0, fpn1, embedding] (numpy) running ``path`` on the CPU
    with ``runtime`` (openvino or onnxruntime). ``precision`` (OpenVINO): "auto" keeps its default, bf16 for the
    float ops on CPUs that have bf16 (the fastest); "f32" runs them in float32. OpenVINO compiles the Hiera graph in
    about 85 s on 2 cores (the float graph as much as the quantized one); its model cache
    (``$XDG_CACHE_HOME/sam2ptq/openvino``, default ``~/.cache``) makes every later compile of the same file 0.3 s."""
    if runtime == "onnxruntime":
        ort = _need("onnxruntime")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        # MatMulAddFusion of ONNX Runtime 1.32 turns an N-d QDQ MatMul + bias into Gemm and mistypes the
        # QuantizeLinear it inserts on the way (a session that cannot start); without it the QDQ MatMuls still run
        # as int8 kernels
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["MatMulAddFusion"])
        return lambda px: sess.run(None, {"pixel_values": px})
    if runtime == "openvino":
        ov = _need("openvino")
        import os
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam2ptq" / "openvino"
        cache.mkdir(parents=True, exist_ok=True)
        cfg = {"CACHE_DIR": str(cache), **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        if precision == "f32":
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        # OpenVINO keys its cache by the file's path: compile a copy named by the content, so the stage's temp
        # file, the published stage and an output tree share one compiled model
        import hashlib
        import shutil
        named = cache / "models" / f"{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]}.onnx"
        if not named.is_file():
            named.parent.mkdir(exist_ok=True)
            tmp = named.with_suffix(f".tmp-{os.getpid()}")
            shutil.copyfile(path, tmp)
            tmp.replace(named)
        compiled = ov.Core().compile_model(str(named), "CPU", cfg)
        req = compiled.create_infer_request()

        def run(px):
            res = req.infer({0: px})
            return [res[o] for o in compiled.outputs]
        return run
    raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")


class RuntimeSam2(nn.Module):
    """The float Sam2Model with its image encoder replaced by a graph runtime (``open_runtime``): prompt encoder and
    mask decoder stay in torch, so masks can be scored like the fake-quant model's."""

    def __init__(self, sam2: nn.Module, encoder):
        super().__init__()
        self.sam2, self.encoder = sam2, encoder

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        outs = self.encoder(pixel_values.detach().float().cpu().numpy())
        return [torch.from_numpy(o).to(device=pixel_values.device, dtype=pixel_values.dtype) for o in outs]

    def forward(self, **kw):
        return self.sam2(**kw)


def score_runtime(fp: nn.Module, path: Path, info: dict, items, size: int, per_side: int) -> dict:
    """The real-kernel encoder (``path`` on ``info["runtime"]``) scored against float like the fake-quant model:
    encoder SQNR and mask agreement over ``items()`` (evaluation items), plus the export's latency and SQNR."""
    from ..sam2.evaluation import evaluate_images, summarize
    rt = RuntimeSam2(fp, open_runtime(path, info["runtime"], precision=info.get("precision_setting", "auto")))
    per_img, _ = evaluate_images(fp, rt, items(), size, per_side, 0)
    s = summarize(per_img)
    return {"runtime": info["runtime"], "encoder": s["encoder"], "masks": s["masks"],
            **{k: info[k] for k in ("precision", "latency_s", "speedup_vs_fp32", "speedup_vs_bf16", "bytes",
                                    "sqnr_db")}}


def time_encoder(fn, x, warmup: int = 2, runs: int = 5) -> float:
    """Median seconds of ``fn(x)`` over ``runs`` after ``warmup`` calls."""
    import statistics
    for _ in range(warmup):
        fn(x)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def pick_runtime(wanted: str) -> str:
    """``wanted`` if installed, or for "auto" the fastest installed; one error line naming the extra otherwise."""
    have = available_runtimes()
    if wanted == "auto":
        if not have:
            raise MissingRuntime("no ONNX runtime is installed; install one: pip install -e '.[openvino]' or "
                                 "pip install -e '.[onnx]'")
        return have[0]
    if wanted not in have:
        _need(wanted)
    return wanted


def check_exporter(runtime: str) -> str:
    """The runtime ``pick_runtime`` gives, after checking that the exporter's packages import."""
    for m in ("onnx", "onnxscript"):
        _need(m)
    return pick_runtime(runtime)


def _sqnr_db(ref, got) -> float:
    """``metrics.sqnr_db`` for a runtime's numpy output against a torch reference."""
    return sqnr_db(torch.as_tensor(ref), torch.as_tensor(got))


def build_export(d: Path, fp_model: nn.Module, quant_model: nn.Module, static_model: nn.Module,
                 qlayers: dict[str, dict], schemes: dict[str, LayerScheme], pixels: torch.Tensor, runtime: str,
                 latency_runs: int, precision: str = "auto", progress=None) -> dict:
    """``d/encoder.onnx`` from ``static_model`` (the quantized model with each layer at its ``static8`` scheme),
    and what it does against the others on ``pixels`` [n, 3, S, S] (normalised): the runtime's encoder SQNR against
    the float model, against the pipeline's fake-quant model (per-token activations) and against ``static_model``
    (the same formats: only the kernels' rounding differs), per level; and the encoder latency at batch 1 (median of
    ``latency_runs`` after 2 warm-up runs) of torch fp32 eager, torch bf16 eager and the runtime, with file sizes.
    ``progress(done, total, what)`` is told each of the 4 steps."""
    step = progress or (lambda *a: None)
    step(0, 4, "export")
    info = export_onnx(d / "encoder.onnx", static_model, qlayers, schemes, pixels.shape[-1])
    step(1, 4, f"compile ({runtime})")
    run = open_runtime(d / "encoder.onnx", runtime, precision=precision)
    step(2, 4, "fidelity")
    levels = ("fpn0", "fpn1", "embedding")
    sq = {k: {lv: [] for lv in levels} for k in ("vs_float", "vs_fake_quant", "vs_static_fake_quant",
                                               "fake_quant_vs_float", "static_vs_float")}
    with torch.inference_mode():
        for i in range(pixels.shape[0]):
            x = pixels[i:i + 1].float()
            got = run(x.numpy())
            ref = fp_model.get_image_embeddings(x)
            fq = quant_model.get_image_embeddings(x)
            st = static_model.get_image_embeddings(x)
            for j, lv in enumerate(levels):
                sq["vs_float"][lv].append(_sqnr_db(ref[j], got[j]))
                sq["vs_fake_quant"][lv].append(_sqnr_db(fq[j], got[j]))
                sq["vs_static_fake_quant"][lv].append(_sqnr_db(st[j], got[j]))
                sq["fake_quant_vs_float"][lv].append(_sqnr_db(ref[j], fq[j]))
                sq["static_vs_float"][lv].append(_sqnr_db(ref[j], st[j]))
    mean = {k: {lv: sum(v) / len(v) for lv, v in per.items()} for k, per in sq.items()}
    step(3, 4, "latency")
    x = pixels[:1].float()
    with torch.inference_mode():
        t_fp32 = time_encoder(fp_model.get_image_embeddings, x, runs=latency_runs)
        import copy
        bf = copy.deepcopy(fp_model).to(torch.bfloat16)
        t_bf16 = time_encoder(bf.get_image_embeddings, x.bfloat16(), runs=latency_runs)
        del bf
    t_rt = time_encoder(run, x.numpy(), runs=latency_runs)
    step(4, 4, "done")
    fp32_bytes = sum(m.weight.numel() * 4 for m in (dict(trunk(fp_model).named_modules())[k] for k in qlayers))
    return {**info, "runtime": runtime, "precision": _precision(runtime, precision),
            "images": int(pixels.shape[0]), "image_size": int(pixels.shape[-1]),
            "sqnr_db": mean, "latency_s": {"torch_fp32": t_fp32, "torch_bf16": t_bf16, runtime: t_rt},
            "speedup_vs_fp32": t_fp32 / t_rt, "speedup_vs_bf16": t_bf16 / t_rt,
            "linear_weights_fp32_bytes": fp32_bytes, "threads": torch.get_num_threads(),
            "activations": "static per-tensor 8-bit from calibration ranges (the pipeline evaluates dynamic "
                           "per-token / per-group activations; sqnr_db.static_vs_float vs fake_quant_vs_float "
                           "is what the runtime's form costs)"}


def _precision(runtime: str, wanted: str) -> str:
    """The precision the runtime's float ops run in."""
    if runtime == "openvino" and wanted == "auto":
        import openvino as ov
        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return "f32"
